"""Admission control: shed new work while the event loop lags behind (CPU overload).

A probe wakes every ``interval`` seconds and measures how late it woke: that lag is
what every request now waits before its turn. While it exceeds ``max_lag``, new
analytics requests get an immediate 503 with ``Retry-After`` instead of joining a
queue that makes every caller wait; health checks and requests already admitted
go on. Calls held on upstream (Continue wait, streams) cost no CPU and no lag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from proxy.background import in_background


class LoadShedder:
    def __init__(self, max_lag: float, interval: float = 0.01) -> None:
        self.max_lag = max_lag
        self._interval = interval
        #: the latest lag, decaying so one slow tick does not flap
        self.lag = 0.0

    @property
    def enabled(self) -> bool:
        return self.max_lag > 0

    def overloaded(self) -> bool:
        return self.lag > self.max_lag

    def observe(self, lag: float) -> None:
        self.lag = max(lag, self.lag * 0.5)

    async def probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self._interval)
            self.observe(max(0.0, loop.time() - started - self._interval))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        async with in_background(self.probe()):
            yield
