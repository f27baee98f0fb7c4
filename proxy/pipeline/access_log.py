"""The access log: one line per request, written without ``logging``'s per-record machinery.

It writes the line a ``logging`` handler would (the same fields, in the JSON or text form
``[server] log_format`` picks, through the same redaction guard) straight to the stream
the log handler writes to (why: ``bench/NOTES.md``). Whether it writes at all follows
the ``proxy.access`` logger: a ``log_level`` above INFO turns it off.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from proxy.pipeline.redaction import redact

LOGGER = "proxy.access"


class AccessLog:
    def __init__(self, fmt: str, stream: Callable[[], TextIO] = lambda: sys.stderr) -> None:
        self._json = fmt == "json"
        self._time_form = "%Y-%m-%dT%H:%M:%S" if self._json else "%Y-%m-%d %H:%M:%S"
        #: looked up per line, so a stream replaced after start-up (tests capturing stderr) is honoured
        self._stream = stream
        self._logger = logging.getLogger(LOGGER)
        self._second: tuple[int, str] = (-1, "")

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        now = time.time()
        if self._json:
            entry = {
                "time": self._time(now),
                "level": "INFO",
                "logger": LOGGER,
                "message": message,
            }
            line = orjson.dumps(entry | fields, default=str).decode()
        else:
            line = f"{self._time(now)},{int(now % 1 * 1000):03d} INFO {LOGGER} {message}"
        self._stream().write(redact(line) + "\n")

    def _time(self, now: float) -> str:
        """The local time to the second, formatted once per second."""
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime(self._time_form, time.localtime(second)))
        return self._second[1]
