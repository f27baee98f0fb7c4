"""A bounded TTL cache where concurrent misses of one key share one load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from cachetools import TTLCache

from proxy.errors import ApiError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


#: the largest value (sealed, as Redis holds it) a cache of small JSON values reads from the shared layer
SMALL_SHARED_VALUE = 64 * 1024


def _always(value: Any) -> bool:
    return True


class SharePolicy(NamedTuple):
    """How one cache's answers are kept in the fleet's shared layer."""

    namespace: str
    #: its keys' and values' form in the shared layer (``proxy/shared/codecs.py``)
    codec: Any
    ttl: float
    negative_ttl: float
    cache_error: Callable[[BaseException], bool]
    #: a stored value longer than this is refused unread (someone wrote it: no value of ours is that long)
    max_bytes: int = SMALL_SHARED_VALUE
    #: whether a value found in the shared layer (in its shared form, before the codec loads it) is fresh for this
    #: reader (a writer's TTL may be longer)
    fresh: Callable[[Any], bool] = _always
    #: whose values these are and the bytes they may write per ``ttl`` (so hold at most twice that); None: no bound
    budget: tuple[str, int] | None = None


class Refusal(NamedTuple):
    """A cached failure as data: what the caller is answered, and nothing of the request that earned it."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    def error(self) -> ApiError:
        return ApiError(self.status, self.body, self.headers)


class SharedLoads(Protocol):
    """A fleet-wide layer behind the cache (``proxy/shared/redis_layer.py``): it answers a local miss."""

    async def load(self, key: Any, load: Callable[[], Awaitable[Any]], policy: SharePolicy) -> Any: ...


class SingleFlightCache(Generic[K, V]):
    """Caches values for ``ttl`` seconds and chosen failures for ``negative_ttl``.

    A failure is cached when it is an ``ApiError`` and ``cache_error(exc)`` says so (a GitLab
    401, say), as a ``Refusal`` (its status, body and headers: never the exception, whose
    traceback would keep the request's frames alive); any other failure (GitLab down) reaches
    every waiter and is not cached.
    Waiters that give up do not cancel the shared load unless all give up.

    Bounded by entries (``maxsize``), and with ``size_of`` by bytes too (``max_bytes``): each
    value then weighs its size, at least ``max_bytes / maxsize``, so both bounds hold; a value
    larger than ``max_bytes`` is answered but not kept. Expired entries go at the next
    insertion, or at once with ``expire()`` (the pipeline's sweep calls it every second).
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        negative_ttl: float = 0.0,
        cache_error: Callable[[BaseException], bool] = lambda exc: False,
        timer: Callable[[], float] = time.monotonic,
        size_of: Callable[[V], int] | None = None,
        max_bytes: int = 0,
    ) -> None:
        self._ttl = ttl
        self._timer = timer
        self._size_of = size_of
        self._capacity = max_bytes if size_of is not None else maxsize
        #: each value with the moment it expires
        self._values: TTLCache[K, tuple[V, float]] | None = self._store(maxsize, ttl) if ttl > 0 else None
        self._errors: TTLCache[K, Refusal] | None = TTLCache(maxsize, negative_ttl, timer) if negative_ttl > 0 else None
        self._cache_error = cache_error
        self._negative_ttl = negative_ttl
        self._in_flight: dict[K, tuple[asyncio.Task[V], list[int]]] = {}
        #: the fleet's shared layer, when there is one, and how this cache's answers are kept there
        self._shared: tuple[SharedLoads, SharePolicy] | None = None
        #: how long a value stays here (``ttl``, or shorter in front of a shared layer)
        self._local_ttl = ttl

    def share(self, shared: SharedLoads, namespace: str, codec: Any, local_ttl: float) -> None:
        """Load through the fleet's shared layer: Redis keeps answers for ``ttl`` (and failures for
        ``negative_ttl``) for every process; this process keeps them ``local_ttl`` seconds at most."""
        # a cache bounded by bytes reads values up to twice its capacity (a body as a JSON string: escaped quotes)
        largest = 2 * self._capacity + SMALL_SHARED_VALUE if self._size_of is not None else SMALL_SHARED_VALUE
        policy = SharePolicy(namespace, codec, self._ttl, self._negative_ttl, self._cache_error, largest)
        self._shared = (shared, policy)
        local = min(self._ttl, local_ttl)
        if self._values is not None:
            self._values = self._store(self._entries, local)
            self._local_ttl = local
        if self._errors is not None:
            self._errors = TTLCache(self._errors.maxsize, min(self._errors.ttl, local_ttl), self._timer)

    def _store(self, maxsize: int, ttl: float) -> TTLCache[K, tuple[V, float]]:
        """The values' table: by entries, or (with ``size_of``) by bytes with a floor per entry."""
        self._entries = maxsize
        size_of = self._size_of
        if size_of is None:
            return TTLCache(maxsize, ttl, self._timer)
        floor = max(1, self._capacity // maxsize)

        def weight(entry: tuple[V, float]) -> int:
            return max(floor, size_of(entry[0]))

        return TTLCache(self._capacity, ttl, self._timer, getsizeof=weight)

    def expire(self) -> None:
        """Drop every expired entry now (a sweep; lookups alone would leave them until the next insertion)."""
        if self._values is not None:
            self._values.expire()
        if self._errors is not None:
            self._errors.expire()

    def peek(self, key: K) -> tuple[V, float] | None:
        """The cached value and when it expires, without loading anything."""
        return None if self._values is None else self._values.get(key)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The value and whether it came from the cache (or a load already in flight)."""
        if self._values is not None and (entry := self._values.get(key)) is not None:
            return entry[0], True
        if self._errors is not None and (refusal := self._errors.get(key)) is not None:
            raise refusal.error()
        flight = self._in_flight.get(key)
        shared = flight is not None
        if flight is None:
            task = asyncio.ensure_future(self._load(key, load))
            flight = (task, [0])
            self._in_flight[key] = flight
        task, waiters = flight
        waiters[0] += 1
        try:
            return await asyncio.shield(task), shared
        except asyncio.CancelledError:
            if not task.done() and waiters[0] == 1:
                task.cancel()
            raise
        finally:
            waiters[0] -= 1
            # the load's error passes through this frame, which would otherwise hold the task that holds the
            # error: a cycle keeping every caller's frames (and request bodies) until the cyclic collector runs
            task = flight = None  # type: ignore[assignment]

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            if self._shared is None:
                value = await load()
            else:
                shared, policy = self._shared
                value = await shared.load(key, load, policy)
        except Exception as exc:
            if self._errors is not None and isinstance(exc, ApiError) and self._cache_error(exc):
                self._errors[key] = Refusal(exc.status, exc.body, exc.headers)
            raise
        finally:
            self._in_flight.pop(key, None)
        if self._values is not None and (self._size_of is None or self._size_of(value) <= self._capacity):
            self._values[key] = (value, self._timer() + self._local_ttl)
        return value
