"""A cap on concurrent upstream calls per tenant."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from proxy.errors import unavailable


class _Slots:
    """One key's free slots and the callers waiting for one, oldest first."""

    __slots__ = ("free", "users", "waiters")

    def __init__(self, free: int) -> None:
        self.free = free
        #: callers holding or waiting for a slot: the entry is dropped when none are left
        self.users = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


#: what a caller past its project's cap is told
BUSY = "Too many concurrent analytics requests for this project; try again shortly"


class TenantLimiter:
    """At most ``limit`` calls per key at once; a caller waits up to ``queue_timeout``, then 503.

    Callers wait in turn: a slot given back goes straight to the longest waiting caller,
    so one arriving at that moment cannot take it past them (as the Cube pool's
    connections do). Written on futures and one timer, never asking for the running loop
    per call (on Python 3.11 that is a system call; ``bench/NOTES.md``).
    """

    def __init__(self, limit: int, queue_timeout: float, on_wait: Callable[[], None] = lambda: None) -> None:
        self._limit = limit
        #: told each time a caller has to wait for a slot (the metrics count it)
        self._on_wait = on_wait
        self._queue_timeout = queue_timeout
        self._slots: dict[str, _Slots] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self, key: str) -> Callable[[], None]:
        """Wait for a slot; the returned function gives it back (once)."""
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(self._limit)
        slots.users += 1
        if slots.free > 0 and not slots.waiters:
            slots.free -= 1
        else:
            self._on_wait()
            await self._wait(key, slots)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._give_back(slots)
                self._leave(key, slots)

        return release

    def queued(self) -> dict[str, int]:
        """Callers waiting for a slot now, by key (the status page's per-tenant queue)."""
        return {key: len(slots.waiters) for key, slots in self._slots.items() if slots.waiters}

    async def _wait(self, key: str, slots: _Slots) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        slots.waiters.append(waiter)
        timer = loop.call_later(self._queue_timeout, _expire, waiter)
        try:
            await waiter  # done when a slot is handed over
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(slots)  # handed a slot just as the caller gave up: pass it on
            else:
                with contextlib.suppress(ValueError):  # a timed-out waiter may already be gone
                    slots.waiters.remove(waiter)
            self._leave(key, slots)
            if isinstance(exc, TimeoutError):
                raise unavailable(
                    "Too many concurrent analytics requests for this project; try again shortly"
                ) from None
            raise
        finally:
            timer.cancel()

    def _give_back(self, slots: _Slots) -> None:
        """A slot is free: the longest waiting caller gets it, or it joins the free ones."""
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        slots.free += 1

    def _leave(self, key: str, slots: _Slots) -> None:
        slots.users -= 1
        if slots.users == 0 and self._slots.get(key) is slots:
            del self._slots[key]


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
