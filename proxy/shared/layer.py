"""The fleet's shared layer as the pipeline sees it: a small interface, whatever stores it (Redis today)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from proxy.caching.singleflight import SharePolicy


class SharedLayer(Protocol):
    """Loads shared by every process of the fleet, a rate bucket per caller, and the layer's health.

    Every call is bounded by ``[redis] timeout``; when the store fails the layer is
    ``degraded`` and answers as if nothing were shared (each process asks on its own).
    """

    #: the store failed its last call: local caches serve meanwhile
    degraded: bool
    #: shared values refused so far: a bad signature, another format, or past their expiry
    tampered: int

    async def load(self, key: Any, load: Callable[[], Awaitable[Any]], policy: SharePolicy) -> Any:
        """The shared value for ``key``, or ``load()``'s once for the whole fleet (then shared)."""
        ...

    async def rate(self, caller_key: str, rate: float, burst: int) -> int | None:
        """Seconds to wait before the caller's next request across the fleet, or None to go on."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...

    async def close(self) -> None: ...
