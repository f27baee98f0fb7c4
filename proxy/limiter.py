"""A cap on concurrent upstream calls per tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .errors import ApiError


class TenantLimiter:
    """At most ``limit`` calls per key at once; a caller waits up to ``queue_timeout``, then 503."""

    def __init__(self, limit: int, queue_timeout: float) -> None:
        self._limit = limit
        self._queue_timeout = queue_timeout
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    async def acquire(self, key: str) -> Callable[[], None]:
        """Wait for a slot; the returned function gives it back (once)."""
        entry = self._slots.get(key)
        if entry is None:
            entry = (asyncio.Semaphore(self._limit), [0])
            self._slots[key] = entry
        semaphore, users = entry
        users[0] += 1
        try:
            if semaphore.locked():  # only a caller that has to queue pays for a timer
                async with asyncio.timeout(self._queue_timeout):
                    await semaphore.acquire()
            else:
                await semaphore.acquire()
        except TimeoutError:
            self._leave(key, users)
            raise ApiError(
                503,
                {"message": "Too many concurrent analytics requests for this project; try again shortly"},
                {"Retry-After": "1"},
            ) from None
        except BaseException:
            self._leave(key, users)
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                semaphore.release()
                self._leave(key, users)

        return release

    def _leave(self, key: str, users: list[int]) -> None:
        users[0] -= 1
        if users[0] == 0:
            self._slots.pop(key, None)
