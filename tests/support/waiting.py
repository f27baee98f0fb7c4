"""Waiting on a record, never on a time: the loop yielded until a condition holds, a process' lines read as they
come, counters scraped until they add up."""

from __future__ import annotations

import asyncio
import time

from tests.support.metrics import scraped, value
from tests.support.wire import LOAD_ROUTE


async def until(condition, rounds=10_000):
    """Yield to the event loop until ``condition()`` holds (no timed sleeps)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def eventually(condition, what: str, timeout: float = 30.0) -> None:
    """Yield to the event loop until ``condition()`` holds (a record, not a time), failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


class Lines:
    """Every line the proxy writes to stderr, read as it comes (the access lines would fill the pipe otherwise)."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.seen: list[str] = []
        self._task = asyncio.ensure_future(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.seen.append(line.decode())

    def having(self, needle: str) -> list[str]:
        return [line for line in self.seen if needle in line]

    async def ended(self, timeout: float) -> list[str]:
        """Every line, once the stream has ended: every process that held it (children included) is gone."""
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.seen

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until_counted(session, url, wanted: int, timeout: float = 15.0) -> dict:
    """Scrape until the workers' snapshots (written once a second) add up to ``wanted`` loads."""
    deadline = time.monotonic() + timeout
    while True:
        found = await scraped(session, url)
        got = value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="200")
        if got == wanted or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)  # polling a record that changes once a second, up to the deadline
