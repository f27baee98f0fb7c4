"""The answer cache: load and dry-run answers reused per tenant, on both doors, never what must not be kept."""

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from proxy.caching.answer_cache import ENTRY_OVERHEAD, AnswerCache, AnswerKey
from proxy.cube.tenants import Tenant
from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER, replace
from tests.fakes.cube import answer, continue_wait_then, held_until, load_answer
from tests.support.answer_cache import clocked, count_of, counted_rows, load
from tests.support.metrics import scrape, value
from tests.support.waiting import until

LOAD = "/api/v4/projects/{}/product_analytics/request/load"
DRY_RUN = "/api/v4/projects/1/product_analytics/request/dry-run"
TOKEN_CALL = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}


@pytest.fixture
def cached(make_settings):
    return make_settings(product_analytics={"answer_ttl": 10.0, "answer_stale": 30.0})


async def test_a_repeated_query_is_a_hit_on_both_doors(make_client, cached, cube, access_lines):
    cube.behaviour = counted_rows(0)
    client = await make_client(cached)
    clock = clocked(client)
    first, body = await load(client)
    assert (first.status, first.headers["X-Cache"], "Age" not in first.headers) == (200, "MISS", True)
    clock.now += 4
    again, cached_body = await load(client)
    assert (again.status, again.headers["X-Cache"], again.headers["Age"]) == (200, "HIT", "4")
    assert cached_body == body and count_of(body) == "1" and len(cube.calls_to("load")) == 1
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    lines = [line for line in access_lines() if line["route"] and line["route"].endswith("/load")]
    assert [line["cache"] for line in lines] == ["miss", "hit"]
    assert lines[1]["cube_status"] is None and lines[1]["cube"] is None  # Cube was not asked
    found = await scrape(client)
    assert value(found, "pa_proxy_answer_cache_total", result="hit") == 1
    assert value(found, "pa_proxy_answer_cache_total", result="miss") == 1
    assert value(found, "pa_proxy_answer_cache_bytes") >= len(body)


async def test_off_by_default_there_is_no_header_and_every_call_reaches_cube(make_client, settings, cube):
    client = await make_client(settings)
    for _ in range(2):
        resp, _ = await load(client)
        assert resp.status == 200 and "X-Cache" not in resp.headers
    assert len(cube.calls_to("load")) == 2


async def test_the_key_is_the_canonical_query_keys_sorted_lists_in_order(make_client, cached, cube):
    client = await make_client(cached)
    query = {"measures": ["TrackedEvents.count", "TrackedEvents.pageViews"], "dimensions": ["TrackedEvents.name"]}
    reordered = {"dimensions": ["TrackedEvents.name"], "measures": ["TrackedEvents.count", "TrackedEvents.pageViews"]}
    swapped = {"dimensions": ["TrackedEvents.name"], "measures": ["TrackedEvents.pageViews", "TrackedEvents.count"]}
    statuses = [(await load(client, q))[0].headers["X-Cache"] for q in (query, reordered, swapped)]
    assert statuses == ["MISS", "HIT", "MISS"]  # object keys in any order are one query; list order is meaningful
    dry = await client.post(DRY_RUN, json={"query": query}, headers=REPORTER)
    assert dry.headers["X-Cache"] == "MISS"  # the endpoint is part of the key
    dry = await client.post(DRY_RUN, json={"query": reordered}, headers=REPORTER)
    assert dry.headers["X-Cache"] == "HIT" and len(cube.calls_to("dry-run")) == 1


async def test_two_projects_asking_the_same_query_get_their_own_answers(make_client, cached, cube):
    async def per_tenant(call, request):
        app_id = call.claims["appId"]
        return web.json_response(load_answer(call.body["query"], [{"TrackedEvents.count": app_id}]))

    cube.behaviour = per_tenant
    client = await make_client(cached)
    for _ in range(2):
        one, one_body = await load(client, project=1)
        two, two_body = await load(client, project=2)
        assert count_of(one_body) == "gitlab_project_1" and count_of(two_body) == "gitlab_project_2"
    assert (one.headers["X-Cache"], two.headers["X-Cache"]) == ("HIT", "HIT")
    assert sorted(c.claims["appId"] for c in cube.calls_to("load")) == ["gitlab_project_1", "gitlab_project_2"]


async def test_a_project_can_have_its_own_ttl_or_none(make_settings, make_client, cube):
    settings = make_settings(
        product_analytics={"answer_ttl": 10.0}, projects={"2": {"answer_ttl": 0.0}}
    )  # fmt: skip
    client = await make_client(settings)
    for _ in range(2):
        two, _ = await load(client, project=2)
        assert "X-Cache" not in two.headers
    assert len(cube.calls_to("load")) == 2


@pytest.mark.parametrize(
    "behaviour",
    [
        answer(400, {"error": "'nope' not found for path 'TrackedEvents.nope'"}),
        answer(500, {"error": "Internal Server Error"}),
        continue_wait_then([1000]),
    ],
    ids=["cube_error", "cube_5xx", "continue_wait"],
)
async def test_errors_and_continue_wait_are_never_kept(make_settings, make_client, cube, behaviour):
    settings = make_settings(
        product_analytics={"answer_ttl": 10.0}, cube={"continue_wait_budget": 0.0, "continue_wait_pause": 0.0}
    )
    cube.behaviour = behaviour
    client = await make_client(settings)
    first, _ = await load(client)
    second, _ = await load(client)
    assert first.headers["X-Cache"] == second.headers["X-Cache"] == "MISS"
    assert len(cube.calls_to("load")) == 2


async def test_an_answer_over_the_size_limit_is_not_kept(make_settings, make_client, cube):
    cube.rows = [{"TrackedEvents.count": "x" * 2000}]
    client = await make_client(make_settings(product_analytics={"answer_ttl": 10.0}, cube={"answer_max_bytes": 1024}))
    assert [(await load(client))[0].headers["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]
    assert len(cube.calls_to("load")) == 2


async def test_include_token_calls_bypass_the_cache(make_client, cached, cube, gitlab):
    client = await make_client(cached)
    await load(client, headers=TOKEN_CALL)
    for _ in range(2):
        resp, _ = await load(client, headers=TOKEN_CALL, include_token=True)
        assert (resp.status, resp.headers["X-Cache"]) == (200, "BYPASS")
    assert len(cube.calls_to("load")) == 3
    tokens = [c.claims["gitlabToken"] for c in cube.calls_to("load")]
    assert tokens[0] is None and all(tokens[1:])  # each bypassing call carried its own minted token


@pytest.mark.parametrize("renew", [True, "true", None, 1, "yes"])
async def test_a_renewal_asks_cube_and_never_answers_or_replaces_the_plain_entry(make_client, cached, cube, renew):
    """``renewQuery`` as anything but ``false``: Cube is asked (it renews on true and "true", refuses the rest); a
    good answer drops the plain entry, so the next plain call asks Cube (whose cache is renewed), and the renewed
    answer, which echoes renewQuery, is never served for the plain query."""
    cube.behaviour = counted_rows(0)
    client = await make_client(cached)
    _, first = await load(client)
    renewed, renewed_body = await load(client, {**QUERY, "renewQuery": renew})
    assert renewed.headers["X-Cache"] == "BYPASS" and count_of(renewed_body) == "2"
    again, again_body = await load(client)
    assert again.headers["X-Cache"] == "MISS" and count_of(again_body) == "3"  # asked again, not the renewed one
    assert count_of(first) == "1" and len(cube.calls_to("load")) == 3
    assert cube.calls_to("load")[1].body["query"]["renewQuery"] == renew  # Cube got the caller's value


async def test_renew_query_false_is_a_query_of_its_own(make_client, cached, cube):
    cube.behaviour = counted_rows(0)
    client = await make_client(cached)
    await load(client)
    plain_false, _ = await load(client, {**QUERY, "renewQuery": False})
    again, _ = await load(client, {**QUERY, "renewQuery": False})
    assert (plain_false.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")


async def test_a_stale_answer_is_served_while_one_refresh_asks_cube(make_client, cached, cube):
    cube.behaviour = counted_rows(0)
    client = await make_client(cached)
    clock = clocked(client)
    await load(client)
    hold = asyncio.Event()
    counting = counted_rows(1)

    async def held(call, request):
        await hold.wait()
        return await counting(call, request)

    cube.behaviour = held
    clock.now += 12  # past the TTL (10 s), within the stale window (30 s more)
    stale = [await load(client) for _ in range(3)]
    assert [(r.headers["X-Cache"], count_of(b)) for r, b in stale] == [("STALE", "1")] * 3
    assert stale[0][0].headers["Age"] == "12"
    answers = client.app[PIPELINE].services.cached_queries
    assert answers.refreshing == 1  # one refresh for three stale callers
    hold.set()
    await until(lambda: answers.refreshing == 0)
    fresh, body = await load(client)
    assert (fresh.headers["X-Cache"], count_of(body)) == ("HIT", "2")
    assert len(cube.calls_to("load")) == 2


@pytest.mark.parametrize("failure", [answer(502, {"error": "bad gateway"}), answer(400, {"error": "bad query"})])
async def test_a_failed_refresh_keeps_the_stale_answer_and_backs_off(make_client, cached, cube, caplog, failure):
    """A Cube that fails fast behind a stale entry is asked once per interval (the tenant's answer_ttl: 10 s here),
    not once per stale hit (40 hits had made 40 Cube calls, each with a warning); the failure is said once."""
    client = await make_client(cached)
    clock = clocked(client)
    _, body = await load(client)
    cube.behaviour = failure
    clock.now += 15
    stale, stale_body = await load(client)
    assert (stale.status, stale.headers["X-Cache"], stale_body) == (200, "STALE", body)
    answers = client.app[PIPELINE].services.cached_queries
    await until(lambda: answers.refreshing == 0 and len(cube.calls_to("load")) == 2)
    for _ in range(20):  # the refresh failed: the stale answer is served, and Cube not asked again
        still, still_body = await load(client)
        assert (still.headers["X-Cache"], still_body) == ("STALE", body)
    assert answers.refreshing == 0 and len(cube.calls_to("load")) == 2
    clock.now += 10  # the interval has passed: one more try, and again one only
    for _ in range(20):
        await load(client)
    await until(lambda: answers.refreshing == 0 and len(cube.calls_to("load")) == 3)
    assert len([r for r in caplog.records if getattr(r, "event", None) == "answer_refresh_failed"]) == 1
    clock.now += 30  # past the stale window: Cube's error
    gone, _ = await load(client)
    assert gone.status >= 400 and gone.headers["X-Cache"] == "MISS"  # Cube's error, as Cube's errors are mapped


async def test_a_refresh_that_succeeds_after_failing_ends_the_backoff(make_client, cached, cube):
    client = await make_client(cached)
    clock = clocked(client)
    await load(client)
    cube.behaviour = answer(503, {"error": "connect ECONNREFUSED 10.0.0.5:5432"})
    clock.now += 15
    await load(client)
    answers = client.app[PIPELINE].services.cached_queries
    await until(lambda: answers.refreshing == 0 and len(cube.calls_to("load")) == 2)
    cube.behaviour = counted_rows(10)
    clock.now += 10
    await load(client)
    await until(lambda: answers.refreshing == 0 and len(cube.calls_to("load")) == 3)
    fresh, body = await load(client)
    assert (fresh.headers["X-Cache"], count_of(body)) == ("HIT", "11")


async def test_a_hit_through_the_lane_is_served_by_the_lane(make_client, cached, cube, serving):
    client = await make_client(cached)
    await load(client)
    resp, _ = await load(client)
    assert resp.headers["X-Cache"] == "HIT"
    if serving == "fast_lane":
        assert client.server.lane.served == 2


def test_the_cache_is_bounded_by_bytes_least_recently_used_first():
    tenant = Tenant(1, "gitlab_project_1", "http://cube", "k", "http://cube", 10.0, 0.0)
    cache = AnswerCache(max_bytes=3 * (1000 + ENTRY_OVERHEAD), max_entry_bytes=2000, clock=lambda: 0.0)
    keys = [AnswerKey(tenant, "load", b"%d" % i) for i in range(5)]
    for key in keys[:3]:
        cache.put(key, b"x" * 1000)
    assert cache.get(keys[0]) is not None  # used: now the most recent
    cache.put(keys[3], b"y" * 1000)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.evictions == 1
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    cache.put(keys[4], b"z" * 3000)  # over max_entry_bytes: not kept, nothing evicted for it
    assert cache.get(keys[4]) is None and cache.evictions == 1


async def test_the_fleet_shares_answers_signed(make_client, shared_settings, cube, redis_server, caplog):
    settings = replace(shared_settings, "product_analytics", answer_ttl=10.0)
    cube.behaviour = counted_rows(0)
    first, second, third = [await make_client(settings) for _ in range(3)]
    [one, two] = [await load(proxy) for proxy in (first, second)]
    assert [r.headers["X-Cache"] for r, _ in (one, two)] == ["MISS", "HIT"]
    assert one[1] == two[1] and len(cube.calls_to("load")) == 1  # the second process asked Cube nothing
    client = aioredis.from_url(redis_server.url)
    try:
        keys = [k async for k in client.scan_iter(match="product-analytics-proxy:answers:*") if b":lock" not in k]
        assert len(keys) == 1 and b"TrackedEvents" not in keys[0]  # keyed by a hash, never the query
        stored = await client.get(keys[0])
        version, expires, signature, payload = stored.split(b".", 3)
        data = orjson.loads(payload)
        data["value"]["body"] = data["value"]["body"].replace('"1"', '"999999"')
        await client.set(keys[0], b".".join((version, expires, signature, orjson.dumps(data))))
    finally:
        await client.aclose()
    resp, body = await load(third)
    assert count_of(body) == "2" and resp.headers["X-Cache"] == "MISS"  # refused, and Cube asked again
    assert any(getattr(r, "event", None) == "shared_value_refused" for r in caplog.records)


async def test_shutdown_ends_a_refresh_under_way(make_client, cached, cube):
    client = await make_client(cached)
    clock = clocked(client)
    await load(client)
    hold = asyncio.Event()

    async def slow(call, request):
        await hold.wait()
        return web.json_response(load_answer(call.body["query"], cube.rows))

    cube.behaviour = slow
    clock.now += 12
    assert (await load(client))[0].headers["X-Cache"] == "STALE"
    answers = client.app[PIPELINE].services.cached_queries
    assert answers.refreshing == 1
    await asyncio.wait_for(answers.close(), 5)
    assert answers.refreshing == 0
    hold.set()


def test_the_sweep_drops_entries_past_their_stale_window():
    tenant = Tenant(1, "gitlab_project_1", "http://cube", "k", "http://cube", 10.0, 5.0)
    now = [0.0]
    cache = AnswerCache(max_bytes=1 << 20, max_entry_bytes=1 << 16, clock=lambda: now[0])
    cache.put(AnswerKey(tenant, "load", b"old"), b"x" * 100)
    now[0] = 12.0
    cache.put(AnswerKey(tenant, "load", b"new"), b"y" * 100)
    cache.expire()
    assert len(cache) == 2  # the old one is stale, not gone
    now[0] = 15.5
    cache.expire()
    assert len(cache) == 1 and cache.get(AnswerKey(tenant, "load", b"new")) is not None
    assert cache.bytes == 100 + ENTRY_OVERHEAD


async def test_a_refresh_that_streams_is_let_go_and_the_stale_answer_served(make_settings, make_client, cube):
    settings = make_settings(
        product_analytics={"answer_ttl": 10.0, "answer_stale": 30.0}, cube={"buffer_limit": 4096}
    )  # fmt: skip
    client = await make_client(settings)
    clock = clocked(client)
    _, body = await load(client)
    cube.rows = [{"TrackedEvents.count": "x" * 10_000}]  # now too large to keep: Cube's answer streams
    clock.now += 12
    stale, stale_body = await load(client)
    assert (stale.headers["X-Cache"], stale_body) == ("STALE", body)
    answers = client.app[PIPELINE].services.cached_queries
    await until(lambda: answers.refreshing == 0 and len(cube.calls_to("load")) == 2)
    pools = client.app[PIPELINE].services.cube_http.pools()
    await until(lambda: sum(pool.open_connections - pool.idle_connections for pool in pools) == 0)
    again, again_body = await load(client)
    assert (again.headers["X-Cache"], again_body) == ("STALE", body)  # nothing kept from the stream


def test_a_tenant_holds_at_most_its_share_and_evicts_its_own_first():
    one, two = (Tenant(n, f"gitlab_project_{n}", "http://cube", "k" * 40, answer_ttl=60.0) for n in (1, 2))
    cache = AnswerCache(max_bytes=40 * 1024, max_entry_bytes=4096, clock=lambda: 0.0, tenant_share=0.25)
    panels = [AnswerKey(two, "load", b"panel-%d" % n) for n in range(5)]
    for key in panels:
        cache.put(key, b"p" * 1000)
    for n in range(200):  # the other tenant floods distinct queries
        cache.put(AnswerKey(one, "load", b"flood-%d" % n), b"f" * 1000)
    assert all(cache.get(key) is not None for key in panels)  # every panel of project 2 stays
    flood = [AnswerKey(one, "load", b"flood-%d" % n) for n in range(200)]
    kept = [key for key in flood if cache.get(key) is not None]
    assert kept == flood[-len(kept) :] and 0 < len(kept) * (1000 + ENTRY_OVERHEAD) <= 10 * 1024  # its newest, its share
    assert cache.bytes == (len(kept) + 5) * (1000 + ENTRY_OVERHEAD)
    assert not cache.keeps(b"x" * (10 * 1024))  # an answer larger than a tenant's share is never kept


async def test_one_tenants_flood_leaves_another_tenants_panels_hits(make_settings, make_client, cube):
    """A Reporter of project 1 within the rate limit sent 480 distinct queries: all of project 2's cached panels
    went from HIT to MISS. Each project now holds at most its share of the cache."""
    settings = make_settings(product_analytics={"answer_ttl": 60.0}, cube={"answer_cache_bytes": 256 * 1024})
    client = await make_client(settings)
    panels = [{**QUERY, "limit": n + 1} for n in range(10)]
    maintainer = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}  # a member of both projects
    for panel in panels:
        assert (await load(client, panel, project=2, headers=maintainer))[0].headers["X-Cache"] == "MISS"
    for n in range(300):
        await load(client, {**QUERY, "filters": [{"member": "A.b", "operator": "equals", "values": [str(n)]}]})
    statuses = [(await load(client, panel, project=2, headers=maintainer))[0].headers["X-Cache"] for panel in panels]
    assert statuses == ["HIT"] * 10


async def test_renewals_of_a_project_are_bounded_by_its_renewal_rate(make_settings, make_client, cube):
    """renewQuery was bounded by the caller's rate alone (100 identical calls, 100 Cube calls): a project's renewals
    are [cube] renewals_per_second with a burst, then 429 with Retry-After, costing Cube nothing; plain calls and
    another project's renewals go on. With the answer cache off too."""
    settings = make_settings(cube={"renewals_per_second": 0.5, "renewals_burst": 3})
    client = await make_client(settings)
    renewing = {**QUERY, "renewQuery": True}
    statuses = [(await load(client, renewing))[0].status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused, body = await load(client, renewing)
    assert refused.headers["Retry-After"] == "2" and b"renewQuery" in body
    assert len(cube.calls_to("load")) == 3
    assert (await load(client))[0].status == 200  # a plain call is not a renewal
    maintainer = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}
    assert (await load(client, renewing, project=2, headers=maintainer))[0].status == 200


async def test_identical_renewals_in_flight_together_are_one_cube_call(make_client, cached, cube):
    hold = asyncio.Event()
    cube.behaviour = held_until(hold, counted_rows(0))
    client = await make_client(cached)
    renewing = {**QUERY, "renewQuery": True}
    both = asyncio.gather(load(client, renewing), load(client, renewing))
    coalescer = client.app[PIPELINE].services.coalescer
    try:  # both callers wait on the one flight that Cube holds
        await until(lambda: len(cube.calls_to("load")) == 1 and coalescer.waiting() == 2)
    finally:
        hold.set()
    (one, one_body), (two, two_body) = await both
    assert one.status == two.status == 200 and one_body == two_body and len(cube.calls_to("load")) == 1
