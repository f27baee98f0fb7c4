"""The answer cache across a fleet (Redis): what a reader takes from another process, and what a Redis writer costs.

Each process decides for itself whether an entry is fresh (its own ``answer_ttl``, from when Cube gave the
answer, which the signed value carries); a value longer than any the fleet writes is refused unread; an answer
that has no shared form (not UTF-8 text) is answered and kept in its process only. Both doors.
"""

from __future__ import annotations

import contextlib
import time

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import OutOfMemoryError

from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, replace
from tests.support.answer_cache import clocked, count_of, counted_rows, load
from tests.support.redis_server import RedisServer

ANSWERS = "product-analytics-proxy:answers:*"


async def answer_keys(redis_url: str) -> list[bytes]:
    client = aioredis.from_url(redis_url)
    try:
        return [k async for k in client.scan_iter(match=ANSWERS) if not k.endswith(b":lock")]
    finally:
        await client.aclose()


async def test_an_entry_is_fresh_by_the_readers_ttl_not_the_writers(make_client, shared_settings, cube, redis_server):
    """A process whose answer_ttl is 600 s kept an answer 18 s ago; one whose answer_ttl is 5 s asks Cube, one whose
    answer_ttl is 60 s takes it (Age 18), and the local copy of it lives only what is left of the reader's TTL."""
    cube.behaviour = counted_rows(0)
    writer = await make_client(replace(shared_settings, "product_analytics", answer_ttl=600.0))
    clock = clocked(writer)
    clock.now = time.time() - 18  # Cube gave this answer 18 s ago
    resp, first = await load(writer)
    assert resp.headers["X-Cache"] == "MISS" and count_of(first) == "1"

    short = await make_client(replace(shared_settings, "product_analytics", answer_ttl=5.0))
    resp, body = await load(short)
    assert resp.headers["X-Cache"] == "MISS" and count_of(body) == "2"  # not the 18-second-old answer as a HIT
    assert len(cube.calls_to("load")) == 2

    longer = await make_client(replace(shared_settings, "product_analytics", answer_ttl=60.0))
    reader_clock = clocked(longer)
    reader_clock.now = time.time()
    resp, body = await load(longer)  # the short reader wrote a fresh answer to the fleet: taken, young
    assert resp.headers["X-Cache"] == "HIT" and count_of(body) == "2" and int(resp.headers["Age"]) <= 1
    reader_clock.now += 61  # past the reader's TTL: its local copy is not kept past it either
    resp, body = await load(longer)
    assert resp.headers["X-Cache"] == "MISS" and count_of(body) == "3"


async def test_a_replayed_old_entry_does_not_live_a_full_ttl(make_client, shared_settings, cube, redis_server):
    """An entry put back within the envelope's 2 s of skew past its expiry: its age is Cube's answer's, so it is
    no longer fresh for a reader with the same TTL."""
    settings = replace(shared_settings, "product_analytics", answer_ttl=10.0)
    cube.behaviour = counted_rows(0)
    writer = await make_client(settings)
    clock = clocked(writer)
    clock.now = time.time() - 11  # written 11 s ago with a 10 s TTL (the envelope's skew: 2 s)
    await load(writer)
    reader = await make_client(settings)
    resp, body = await load(reader)
    assert resp.headers["X-Cache"] == "MISS" and count_of(body) == "2"


async def test_a_huge_value_someone_wrote_is_refused_unread(make_client, shared_settings, cube, redis_server, caplog):
    """60 MiB of junk at an answer's key: refused by its length before a byte of it leaves Redis (it was read twice
    and its HMAC computed on the loop: 830 ms, RSS +47 MiB); Cube is asked, and the fleet's entry mended."""
    settings = replace(shared_settings, "product_analytics", answer_ttl=60.0)
    cube.behaviour = counted_rows(0)
    await load(await make_client(settings))
    [key] = await answer_keys(redis_server.url)
    client = aioredis.from_url(redis_server.url)
    try:
        await client.set(key, b"v1.9999999999999.x." + b"j" * (60 * 1024 * 1024))
        sent_before = int((await client.info("stats"))["total_net_output_bytes"])
        reader = await make_client(settings)
        resp, body = await load(reader)
        sent = int((await client.info("stats"))["total_net_output_bytes"]) - sent_before
        assert resp.status == 200 and resp.headers["X-Cache"] == "MISS" and count_of(body) == "2"
        assert sent < 256 * 1024, f"Redis sent {sent} bytes"  # the 60 MiB never left Redis
        assert await client.strlen(key) < 64 * 1024  # the fleet's entry is Cube's answer again
    finally:
        await client.aclose()
    assert any(getattr(r, "reason", None) == "oversize" for r in caplog.records)


async def test_an_answer_that_is_not_utf8_is_answered_and_kept_in_its_process(make_client, shared_settings, cube):
    """A Cube 200 whose body is not UTF-8 was a 500 on every request with Redis on (200 without): it has no form in
    the fleet's JSON, so it is answered, and kept in this process only."""
    settings = replace(shared_settings, "product_analytics", answer_ttl=60.0)
    raw = b'{"results":[{"data":[{"TrackedEvents.pageTitle":"caf\xe9"}]}]}'  # Latin-1, not UTF-8

    async def latin1(call, request):
        return web.Response(body=raw, content_type="application/json")

    cube.behaviour = latin1
    client = await make_client(settings)
    first, body = await load(client, QUERY)
    assert (first.status, first.headers["X-Cache"], body) == (200, "MISS", raw)
    again, body = await load(client, QUERY)
    assert (again.status, again.headers["X-Cache"], body) == (200, "HIT", raw)


async def test_a_projects_answers_in_redis_are_bounded_by_its_budget(make_client, shared_settings, cube, redis_server):
    """One Reporter at 50 calls a second with a 600 s TTL could put 1.8 GiB into Redis: a project writes at most
    answer_shared_tenant_bytes per answer_ttl there (so holds at most twice that); past it, its answers are still
    answered and kept in the process, and another project's still go to the fleet."""
    settings = replace(shared_settings, "product_analytics", answer_ttl=600.0)
    settings = replace(settings, "cube", answer_shared_tenant_bytes=8 * 1024)
    big = "x" * 1500

    async def sized(call, request):
        return web.json_response({"results": [{"data": [{"TrackedEvents.pageTitle": big}]}]})

    cube.behaviour = sized
    client = await make_client(settings)
    for n in range(20):
        resp, _ = await load(client, {**QUERY, "limit": n + 1})
        assert resp.status == 200 and resp.headers["X-Cache"] == "MISS"
    again, _ = await load(client, {**QUERY, "limit": 20})
    assert again.headers["X-Cache"] == "HIT"  # kept in the process all the same
    redis = aioredis.from_url(redis_server.url)
    try:
        one = [k for k in await answer_keys(redis_server.url) if b"gitlab_project_1|" in k]
        held = sum([await redis.strlen(k) for k in one])
        assert 0 < held <= 8 * 1024 and len(one) < 20, (len(one), held)
        maintainer = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}
        assert (await load(client, QUERY, project=2, headers=maintainer))[0].status == 200
        assert [k for k in await answer_keys(redis_server.url) if b"gitlab_project_2|" in k]  # another's still shared
    finally:
        await redis.aclose()


async def test_a_full_redis_is_said_once_and_costs_callers_nothing(
    make_client, shared_settings, cube, tmp_path, caplog
):
    """A Redis at its maxmemory with no eviction refuses every write: each request logged an error (and the layer
    flapped between degraded and restored); now one line says so, the layer is not degraded (reads work), and
    every caller is answered."""
    full = RedisServer(tmp_path / "full", ["maxmemory 1mb", "maxmemory-policy noeviction"])
    full.start()
    try:
        filler = aioredis.from_url(full.url)
        try:  # fill it up to its limit
            with contextlib.suppress(OutOfMemoryError):
                for n in range(1000):
                    await filler.set(f"filler:{n}", b"f" * 16384)
        finally:
            await filler.aclose()
        settings = replace(shared_settings, "redis", url=full.url)
        settings = replace(settings, "product_analytics", answer_ttl=60.0)
        cube.behaviour = counted_rows(0)
        client = await make_client(settings)
        for n in range(10):
            resp, _ = await load(client, {**QUERY, "limit": n + 1})
            assert resp.status == 200
        said = [r for r in caplog.records if getattr(r, "event", None) in {"shared_full", "shared_degraded"}]
        assert [getattr(r, "event", None) for r in said] == ["shared_full"]
        assert client.app[PIPELINE].services.shared.degraded is False
    finally:
        full.stop()
