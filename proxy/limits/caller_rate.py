"""A per-caller token bucket (spec section 6, "Protection")."""

from __future__ import annotations

import math

from cachetools import LRUCache


class RateLimiter:
    """``rate`` requests per second with bursts of ``burst``; remembers the most recent callers."""

    def __init__(self, rate: float, burst: int, callers: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(maxsize=callers)

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def check(self, caller: str, now: float) -> int | None:
        """``None`` if the call may go ahead, else the whole seconds to wait."""
        tokens, stamp = self._buckets.get(caller, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self._rate))
        self._buckets[caller] = (tokens - 1.0, now)
        return None
