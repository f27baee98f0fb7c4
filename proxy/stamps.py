"""Log lines' time stamps: UTC to the millisecond, formatted once per second (a base module: the access log and
the process's log lines both use it)."""

from __future__ import annotations

import time


class UtcStamps:
    """Times as UTC to the millisecond with their zone, ``2026-12-01T19:50:01.123Z``.

    The part to the second is formatted once per second (the rest is arithmetic).
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        # rounded, not truncated: 1000.9 is 1000.89999... in binary; capped so a rounding never reaches 1000
        return f"{self._second[1]}.{min(999, round((now - second) * 1000)):03d}Z"
