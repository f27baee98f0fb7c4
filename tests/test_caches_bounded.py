"""Caches keep nothing of refused callers, expire on their own, and hold meta answers within a byte budget."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest
from cachetools import Cache

from proxy.caching.singleflight import Refusal, SingleFlightCache
from proxy.errors import ApiError, unauthorized
from proxy.web.keys import PIPELINE


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_refusal_is_kept_as_data_without_the_frames_that_raised_it():
    cache: SingleFlightCache[str, int] = SingleFlightCache(10, 30.0, 5.0, cache_error=lambda exc: True)
    body = bytearray(1024 * 1024)  # what a request's frame would hold: its raw body

    async def refuse() -> int:
        held = body  # noqa: F841 - a local of the frame the traceback would keep
        raise unauthorized()

    with pytest.raises(ApiError):
        await cache.get("k", refuse)
    before = sys.getrefcount(body)
    gc.collect()
    with pytest.raises(ApiError) as again:
        await cache.get("k", refuse)  # answered from the cache
    assert again.value.status == 401 and again.value.__traceback__ is not None
    stored = cache._errors["k"]
    assert isinstance(stored, Refusal) and stored == Refusal(401, {"message": "401 Unauthorized"}, {})
    del again
    gc.collect()
    assert sys.getrefcount(body) <= before  # nothing the cache holds reaches the body


async def test_expire_drops_expired_entries_without_an_insertion():
    clock = Clock()
    cache: SingleFlightCache[str, int] = SingleFlightCache(10, 1.0, 1.0, cache_error=lambda exc: True, timer=clock)

    async def value() -> int:
        return 1

    async def refuse() -> int:
        raise unauthorized()

    await cache.get("a", value)
    with pytest.raises(ApiError):
        await cache.get("b", refuse)
    clock.now = 5.0

    def stored() -> tuple[int, int]:  # what the tables hold, counted without letting them expire anything
        return Cache.__len__(cache._values), Cache.__len__(cache._errors)

    assert stored() == (1, 1)  # kept until something touches the table
    cache.expire()
    assert stored() == (0, 0)


async def test_values_are_bounded_by_bytes_as_well_as_entries():
    cache: SingleFlightCache[str, bytes] = SingleFlightCache(4, 60.0, size_of=len, max_bytes=1000)

    def loader(size: int):
        async def load() -> bytes:
            return b"x" * size

        return load

    for i in range(4):
        await cache.get(f"small{i}", loader(10))  # each weighs the floor: 1000 / 4
    assert len(cache._values) == 4
    await cache.get("big", loader(600))
    held = cache._values
    assert "big" in held and held.currsize <= 1000 and len(held) <= 2
    value, hit = await cache.get("huge", loader(5000))  # larger than the whole budget: served, not kept
    assert len(value) == 5000 and not hit and "huge" not in held


async def test_the_pipeline_sweeps_expired_answers_every_second(make_client, make_settings, gitlab):
    """Refused random tokens leave nothing once their negative TTL is over, with no further request."""
    # a TTL the 20 refusals fit in on a busy machine (a second's sweep must find none expired before the count)
    client = await make_client(make_settings(gitlab={"negative_cache_ttl": 1.0}))
    for i in range(20):
        resp = await client.post(
            "/api/v4/projects/1/product_analytics/request/load",
            json={"query": {"measures": ["TrackedEvents.count"]}},
            headers={"PRIVATE-TOKEN": f"glpat-random-{i:012d}"},
        )
        assert resp.status == 401
    authorizer = client.app[PIPELINE].services.authorizer
    callers = authorizer._callers._errors
    assert Cache.__len__(callers) == 20  # counted without letting the table expire anything itself
    for _ in range(60):  # the TTL, then the sweep (every second): wait for it, bounded
        if not Cache.__len__(callers):
            break
        await asyncio.sleep(0.1)
    assert Cache.__len__(callers) == 0
