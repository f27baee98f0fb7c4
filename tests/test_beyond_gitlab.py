"""Spec section 6: meta cache, server-side Continue wait, coalescing, protection."""

import asyncio
import contextlib
import time

import pytest
from aiohttp import web

from proxy.cube.tenants import resolve_tenant
from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER
from tests.fakes.cube import answer, continue_wait_then, held_until, load_answer
from tests.support.waiting import until

META = "/api/v4/projects/{}/product_analytics/request/meta"
LOAD = "/api/v4/projects/1/product_analytics/request/load"
LOAD_2 = "/api/v4/projects/2/product_analytics/request/load"
DRY = "/api/v4/projects/1/product_analytics/request/dry-run"


def queued_load(client):
    """A load of QUERY by the reporter, sent in the background."""
    return asyncio.ensure_future(client.post(LOAD, json={"query": QUERY}, headers=REPORTER))


async def a_load_held_at_cube(client, cube):
    """A queued load that Cube has received and holds until the returned event is set."""
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    held = queued_load(client)
    await until(lambda: len(cube.calls) == 1)
    return held, release


@pytest.mark.handed_over
async def test_meta_is_fetched_once_per_tenant_within_its_ttl(client, cube):
    for _ in range(5):
        resp = await client.get(META.format(1), headers=REPORTER)
        assert resp.status == 200
        assert (await resp.json())["cubes"][0]["title"] == "Tracked events of gitlab_project_1"
    assert len(cube.calls_to("meta")) == 1


@pytest.mark.handed_over
async def test_meta_is_never_shared_across_tenants(client, cube):
    one = await (await client.get(META.format(1), headers=REPORTER)).json()
    two = await (await client.get(META.format(2), headers=REPORTER)).json()
    assert one["cubes"][0]["title"].endswith("gitlab_project_1")
    assert two["cubes"][0]["title"].endswith("gitlab_project_2")
    assert [c.claims["appId"] for c in cube.calls_to("meta")] == ["gitlab_project_1", "gitlab_project_2"]


@pytest.mark.handed_over
async def test_meta_cache_expires(make_settings, make_client, cube):
    client = await make_client(make_settings(cube={"meta_cache_ttl": 0.0}))
    for _ in range(3):
        assert (await client.get(META.format(1), headers=REPORTER)).status == 200
    assert len(cube.calls_to("meta")) == 3


@pytest.mark.handed_over
async def test_concurrent_meta_misses_make_one_upstream_call(client, cube):
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    tasks = [asyncio.ensure_future(client.get(META.format(1), headers=REPORTER)) for _ in range(10)]
    await cube.arrived.wait()
    await until(lambda: sum(1 for t in tasks if t.done()) == 0 and len(cube.calls) == 1)
    release.set()
    responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [200] * 10
    assert len(cube.calls_to("meta")) == 1


@pytest.mark.handed_over
async def test_meta_errors_and_continue_wait_are_never_cached(make_settings, make_client, cube):
    client = await make_client(make_settings(cube={"continue_wait_budget": 0.0}))
    cube.behaviour = answer(500, {"error": "Error: compile failed", "stack": "/srv"})
    resp = await client.get(META.format(1), headers=REPORTER)
    assert resp.status == 400
    assert await resp.json() == {"message": "Error: compile failed", "error": "Error: compile failed"}
    cube.behaviour = continue_wait_then([1])
    resp = await client.get(META.format(1), headers=REPORTER)
    assert resp.status == 200 and (await resp.json()) == {"error": "Continue wait"}
    cube.behaviour = None
    resp = await client.get(META.format(1), headers=REPORTER)
    assert "cubes" in await resp.json()
    assert len(cube.calls_to("meta")) == 3
    key = resolve_tenant(client.app[PIPELINE].settings, 1)
    assert client.app[PIPELINE].services.meta_cache.peek(key) is not None  # only the good answer was kept


async def test_continue_wait_is_asked_again_server_side(client, cube):
    cube.behaviour = continue_wait_then([3])
    resp = await client.post(LOAD, json={"query": QUERY}, headers={**REPORTER, "X-Request-Id": "panel-1-span-1"})
    assert resp.status == 200
    assert (await resp.json())["results"][0]["data"] == [{"TrackedEvents.count": "42"}]
    loads = cube.calls_to("load")
    assert len(loads) == 4
    assert {c.headers["X-Request-Id"] for c in loads} == {"panel-1-span-1"}


async def test_a_cube_answering_continue_wait_at_once_is_asked_at_most_once_per_pause(make_settings, make_client, cube):
    """A broken Cube that says Continue wait without holding the call: 13,314 calls in 3 s before; now a few."""
    cube.behaviour = answer(200, {"error": "Continue wait"})
    client = await make_client(make_settings(cube={"continue_wait_budget": 1.0, "continue_wait_pause": 0.25}))
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200 and await resp.json() == {"error": "Continue wait"}
    assert 2 <= len(cube.calls) <= 1.0 / 0.25 + 1


async def test_continue_wait_reaches_the_caller_once_the_budget_is_spent(make_settings, make_client, cube):
    never = asyncio.Event()

    async def slow_continue_wait(call, request):
        if len(cube.calls) > 1:
            await never.wait()  # the retry outlives the budget
        return await answer(200, {"error": "Continue wait"})(call, request)

    cube.behaviour = slow_continue_wait
    client = await make_client(make_settings(cube={"continue_wait_budget": 0.5}))
    started = time.monotonic()
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    elapsed = time.monotonic() - started
    assert resp.status == 200
    assert await resp.json() == {"error": "Continue wait"}
    assert elapsed < 5  # the budget, not Cube's read timeout, bounded the wait
    never.set()


async def test_a_query_four_holds_long_answers_with_data_in_one_call(make_settings, make_client, cube):
    """Cube holds each call and says Continue wait (5 s on Cube 0.33; scaled down here to 0.3 s, since only the
    rounds' logic is tested) while the query takes four holds: the caller gets the data from one call."""
    first_seen: list[float] = []

    async def slow_query(call, request):
        loop = asyncio.get_running_loop()
        if not first_seen:
            first_seen.append(loop.time())
        ready_at = first_seen[0] + 1.2
        held_until_time = min(ready_at, loop.time() + 0.3)
        await asyncio.sleep(max(0.0, held_until_time - loop.time()))  # the fake Cube's own query time
        if loop.time() < ready_at:
            return await answer(200, {"error": "Continue wait"})(call, request)
        return await answer(200, load_answer(call.body["query"], [{"TrackedEvents.count": "12"}]))(call, request)

    cube.behaviour = slow_query
    client = await make_client(make_settings(cube={"continue_wait_budget": 2.5}))
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200
    assert (await resp.json())["results"][0]["data"] == [{"TrackedEvents.count": "12"}]
    assert len(cube.calls_to("load")) >= 4


async def test_identical_concurrent_loads_make_one_upstream_call(client, cube):
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    coalescer = client.app[PIPELINE].services.coalescer
    tasks = [queued_load(client) for _ in range(20)]
    await until(lambda: coalescer.waiting() == 20)
    release.set()
    responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [200] * 20
    bodies = [await r.json() for r in responses]
    assert all(b == bodies[0] for b in bodies)
    assert len(cube.calls_to("load")) == 1
    ids = {r.headers["X-Request-Id"] for r in responses}
    assert len(ids) == 20  # every caller keeps its own request id


async def test_different_queries_types_endpoints_and_tenants_are_not_coalesced(client, cube):
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    coalescer = client.app[PIPELINE].services.coalescer
    calls = [
        client.post(LOAD, json={"query": QUERY}, headers=REPORTER),
        client.post(LOAD, json={"query": {**QUERY, "limit": 1}}, headers=REPORTER),
        client.post(LOAD, json={"query": QUERY, "queryType": "regular"}, headers=REPORTER),
        client.post(DRY, json={"query": QUERY}, headers=REPORTER),
        client.post("/api/v4/projects/2/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER),
    ]
    tasks = [asyncio.ensure_future(c) for c in calls]
    await until(lambda: coalescer.waiting() == 5)
    release.set()
    responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [200] * 5
    assert len(cube.calls) == 5


async def test_coalesced_callers_share_an_error_too(client, cube):
    release = asyncio.Event()
    cube.behaviour = held_until(release, answer(400, {"error": "bad member"}))
    coalescer = client.app[PIPELINE].services.coalescer
    tasks = [queued_load(client) for _ in range(3)]
    await until(lambda: coalescer.waiting() == 3)
    release.set()
    responses = await asyncio.gather(*tasks)
    assert [r.status for r in responses] == [400] * 3
    assert len(cube.calls) == 1


async def test_a_joined_caller_leaving_does_not_stop_the_shared_call(client, cube):
    coalescer = client.app[PIPELINE].services.coalescer
    first, release = await a_load_held_at_cube(client, cube)
    leaver = queued_load(client)
    await until(lambda: coalescer.waiting() == 2)
    leaver.cancel()
    await until(lambda: coalescer.waiting() == 1)
    release.set()
    resp = await first
    assert resp.status == 200
    assert len(cube.calls) == 1


async def test_when_the_caller_making_the_shared_call_leaves_the_others_ask_again_once(client, cube):
    coalescer = client.app[PIPELINE].services.coalescer
    leader, release = await a_load_held_at_cube(client, cube)
    stayers = [queued_load(client) for _ in range(2)]
    await until(lambda: coalescer.waiting() == 3)
    leader.cancel()  # its call stops with it; the two still waiting share one new call
    await until(lambda: len(cube.calls) == 2 and coalescer.waiting() == 2)
    release.set()
    responses = await asyncio.gather(*stayers)
    assert [r.status for r in responses] == [200, 200]
    assert len(cube.calls) == 2


async def test_rate_limit_is_429_with_retry_after(make_settings, make_client, cube):
    client = await make_client(make_settings(limits={"rate_limit": 1.0, "rate_limit_burst": 3}))
    statuses = [(await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert "retry after" in (await resp.json())["message"]
    other = await client.post(LOAD, json={"query": QUERY}, headers={"PRIVATE-TOKEN": "glpat-maint-000000000004"})
    assert other.status == 200  # per caller
    assert len(cube.calls) == 4  # three allowed + the other caller; the 429s cost nothing upstream


async def test_one_rate_limit_bucket_per_token_whatever_header_carries_it(make_settings, make_client, cube):
    """The same token as PRIVATE-TOKEN and as Bearer used to get two buckets, doubling its rate."""
    client = await make_client(make_settings(limits={"rate_limit": 0.01, "rate_limit_burst": 2}))
    token = REPORTER["PRIVATE-TOKEN"]
    forms = [REPORTER, {"Authorization": f"Bearer {token}"}, REPORTER, {"Authorization": f"Bearer {token}"}]
    statuses = [(await client.post(LOAD, json={"query": QUERY}, headers=form)).status for form in forms]
    assert statuses == [200, 200, 429, 429]


async def test_concurrent_upstream_calls_are_capped_per_tenant(make_settings, make_client, cube):
    client = await make_client(make_settings(cube={"max_concurrent_per_tenant": 2, "queue_timeout": 0.2}))
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    tasks = [
        asyncio.ensure_future(client.post(LOAD, json={"query": {**QUERY, "limit": n}}, headers=REPORTER))
        for n in range(3)
    ]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    refused = done.pop().result()
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert "Too many concurrent" in (await refused.json())["message"]
    assert len(cube.calls) == 2
    other_tenant = asyncio.ensure_future(
        client.post("/api/v4/projects/2/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER)
    )
    await until(lambda: len(cube.calls) == 3)
    release.set()
    assert (await other_tenant).status == 200
    statuses = [(await t).status for t in tasks]
    assert sorted(statuses) == [200, 200, 503]


async def test_a_call_that_finds_every_cube_connection_busy_past_the_queue_timeout_is_503(
    make_settings, make_client, cube
):
    """The pool's wait is bounded as the tenant cap's is: all connections busy, across tenants, is a 503 to retry."""
    client = await make_client(make_settings(cube={"pool_size": 1, "queue_timeout": 0.2}))
    holder, release = await a_load_held_at_cube(client, cube)
    # another project: its tenant slot is free, the one connection to Cube is not
    refused = await client.post(LOAD_2, json={"query": QUERY}, headers=REPORTER)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json()) == {"message": "all 1 connections to Cube stayed busy for 0.2 s; try again shortly"}
    assert len(cube.calls) == 1  # it cost Cube nothing
    release.set()
    assert (await holder).status == 200
    # the refused caller left nothing behind: the one connection serves the next call
    assert (await client.post(LOAD_2, json={"query": QUERY}, headers=REPORTER)).status == 200
    assert len(cube.calls) == 2


@pytest.mark.handed_over
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_meta_answer_over_max_whole_bytes_is_502_and_not_cached(make_settings, make_client, cube, framing):
    """Meta is read whole (to be cached): its size is bounded, so a runaway answer cannot take the memory."""
    client = await make_client(make_settings(cube={"buffer_limit": 64, "max_whole_bytes": 4096}))
    sent = 0

    async def huge(call, request):
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if framing == "content-length":
            response.content_length = 64 * 1024 * 1024
        await response.prepare(request)
        try:
            await response.write(b'{"cubes":[')
            while sent < 64 * 1024 * 1024:  # "endless" unless the proxy stops reading
                await response.write(b'{"name":"Cube","measures":[]},' * 1000)
                sent += 30_000
        except (ConnectionError, RuntimeError):
            pass  # the proxy hung up
        return response

    cube.behaviour = huge
    resp = await client.get(META.format(1), headers=REPORTER)
    assert resp.status == 502
    assert await resp.json() == {"message": "Cube's answer is larger than 4096 bytes"}
    assert sent < 16 * 1024 * 1024  # it stopped reading, not after 64 MiB
    cube.behaviour = cube.default
    assert (await client.get(META.format(1), headers=REPORTER)).status == 200  # the failure was not cached
    assert len(cube.calls_to("meta")) == 2


@pytest.mark.handed_over
async def test_a_meta_answer_that_trickles_past_the_read_timeout_as_a_whole_is_504(make_settings, make_client, cube):
    """Each gap is under read_timeout, so only a bound on the whole read stops a peer sending a byte at a time."""
    client = await make_client(make_settings(cube={"buffer_limit": 64, "read_timeout": 0.5}))
    stop = asyncio.Event()

    async def trickle(call, request):
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            await response.write(b'{"cubes":[')
            while not stop.is_set():  # a piece every 0.1 s: never silent for read_timeout, never done
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
                await response.write(b" ")
        except (ConnectionError, RuntimeError):
            pass  # the proxy hung up
        return response

    cube.behaviour = trickle
    resp = await client.get(META.format(1), headers=REPORTER)
    stop.set()
    assert resp.status == 504
    assert await resp.json() == {"message": "Cube did not send its whole answer within 0.5 s"}
    cube.behaviour = cube.default
    assert (await client.get(META.format(1), headers=REPORTER)).status == 200  # not cached
