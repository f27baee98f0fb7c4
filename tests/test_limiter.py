"""The per-tenant cap (proxy/limits/tenant_cap.py): in turn, bounded in time, leaking no slot whatever callers do."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import ApiError
from proxy.limits.tenant_cap import TenantLimiter
from tests.support.waiting import until


async def test_callers_past_the_cap_wait_in_turn():
    limiter = TenantLimiter(2, queue_timeout=10)
    first, second = await limiter.acquire("t"), await limiter.acquire("t")
    got: list[int] = []

    async def queue(n: int) -> None:
        release = await limiter.acquire("t")
        got.append(n)
        release()

    waiting = [asyncio.ensure_future(queue(n)) for n in range(3)]
    await until(lambda: all(not t.done() for t in waiting) and len(limiter._slots["t"].waiters) == 3)
    first()
    await asyncio.gather(*waiting)
    assert got == [0, 1, 2]
    second()
    assert limiter._slots == {}  # nothing held, nothing kept


async def test_a_freed_slot_goes_to_the_waiting_caller_not_to_a_newcomer():
    limiter = TenantLimiter(1, queue_timeout=10)
    held = await limiter.acquire("t")
    waiting = asyncio.ensure_future(limiter.acquire("t"))
    await until(lambda: len(limiter._slots["t"].waiters) == 1)
    held()  # handed straight to the waiting caller...
    newcomer = asyncio.ensure_future(limiter.acquire("t"))
    release = await waiting  # ...so it gets the slot, though the newcomer asked before it ran
    assert not newcomer.done()
    release()
    (await newcomer)()


async def test_a_caller_waiting_past_the_queue_timeout_gets_503_and_holds_nothing():
    limiter = TenantLimiter(1, queue_timeout=0.05)
    held = await limiter.acquire("t")
    with pytest.raises(ApiError) as refused:
        await limiter.acquire("t")
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    held()
    (await limiter.acquire("t"))()  # the slot is free again
    assert limiter._slots == {}


async def test_a_caller_cancelled_just_after_being_handed_a_slot_passes_it_on():
    limiter = TenantLimiter(1, queue_timeout=10)
    held = await limiter.acquire("t")
    leaving = asyncio.ensure_future(limiter.acquire("t"))
    staying = asyncio.ensure_future(limiter.acquire("t"))
    await until(lambda: len(limiter._slots["t"].waiters) == 2)
    held()  # the slot is handed to `leaving`...
    leaving.cancel()  # ...which is cancelled before it runs
    release = await asyncio.wait_for(staying, 5)
    assert leaving.cancelled()
    release()
    assert limiter._slots == {}


async def test_giving_a_slot_back_twice_frees_it_once_and_keys_are_separate():
    limiter = TenantLimiter(1, queue_timeout=10)
    release = await limiter.acquire("t")
    other = await limiter.acquire("u")  # another tenant is not capped by this one
    release()
    release()
    again = await limiter.acquire("t")
    waiting = asyncio.ensure_future(limiter.acquire("t"))
    await until(lambda: len(limiter._slots["t"].waiters) == 1)
    assert not waiting.done()  # the double give-back did not make a second slot
    again()
    (await waiting)()
    other()
    assert limiter._slots == {}
