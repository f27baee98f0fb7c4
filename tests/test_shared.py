"""The shared layer on a real Redis (Debian's redis-server, started here): two proxies as two processes of a fleet.

Each test runs two apps against one Redis, through both front doors (``make_client``):
what one asked GitLab or Cube, the other takes from Redis; a value someone wrote to
Redis without the signing key is refused; Redis stopped costs no request.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import QUERY, REPORTER, replace
from tests.support.metrics import samples, value
from tests.support.wire import LOAD

META = "/api/v4/projects/1/product_analytics/request/meta"
GUEST = {"PRIVATE-TOKEN": "glpat-guest-000000000002"}


async def two_proxies(make_client, settings):
    return await make_client(settings), await make_client(settings)


async def test_what_one_process_asked_gitlab_the_other_takes_from_redis(make_client, shared_settings, gitlab, cube):
    first, second = await two_proxies(make_client, shared_settings)
    assert (await first.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    asked = dict(gitlab.calls)
    assert (await second.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    assert gitlab.calls == asked  # the second process asked GitLab nothing
    assert asked["/api/v4/user"] == asked["/api/v4/projects/{id}"] == 1
    # a refusal is shared too (its own, shorter, TTL): the guest's 401 costs GitLab once for both
    assert (await first.post(LOAD, json={"query": QUERY}, headers=GUEST)).status == 401
    guest_calls = sum(gitlab.calls.values())
    refused = await second.post(LOAD, json={"query": QUERY}, headers=GUEST)
    assert (refused.status, await refused.json()) == (401, {"message": "Access Denied"})
    assert sum(gitlab.calls.values()) == guest_calls


@pytest.mark.handed_over  # meta is aiohttp's
async def test_meta_is_asked_of_cube_once_for_the_fleet(make_client, shared_settings, cube):
    first, second = await two_proxies(make_client, shared_settings)
    answers = await asyncio.gather(*(proxy.get(META, headers=REPORTER) for proxy in (first, second) for _ in range(5)))
    assert [a.status for a in answers] == [200] * 10
    bodies = {await a.read() for a in answers}
    assert len(bodies) == 1 and len(cube.calls_to("meta")) == 1


async def test_a_value_written_without_the_signing_key_is_refused(
    make_client, shared_settings, gitlab, cube, redis_server, caplog
):
    first, second = await two_proxies(make_client, shared_settings)
    assert (await first.post(LOAD, json={"query": QUERY}, headers=GUEST)).status == 401
    # someone with write access to Redis makes the guest an administrator, keeping the old signature
    client = aioredis.from_url(redis_server.url)
    try:
        keys = [
            k async for k in client.scan_iter(match="product-analytics-proxy:callers:*") if not k.endswith(b":lock")
        ]
        assert len(keys) == 1 and b"glpat" not in keys[0]  # keyed by a hash, never the token
        stored = await client.get(keys[0])
        version, expires, signature, payload = stored.split(b".", 3)
        data = orjson.loads(payload)
        assert data["value"]["admin"] is False and "glpat" not in payload.decode()
        data["value"]["admin"] = True
        await client.set(keys[0], b".".join((version, expires, signature, orjson.dumps(data))))
    finally:
        await client.aclose()
    caplog.set_level(logging.ERROR)
    refused = await second.post(LOAD, json={"query": QUERY}, headers=GUEST)
    assert (refused.status, await refused.json()) == (401, {"message": "Access Denied"})
    assert [r for r in caplog.records if getattr(r, "event", None) == "shared_value_refused"]
    found = samples(await (await second.get("/-/metrics")).text())
    assert value(found, "pa_proxy_shared_refused_values_total") >= 1  # each read of it is refused
    assert cube.calls == []


async def test_redis_stopped_costs_no_request_and_it_comes_back(
    make_client, shared_settings, gitlab, cube, redis_server
):
    proxy = await make_client(replace(shared_settings, "redis", local_ttl=0.001))
    assert (await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    redis_server.stop()
    for _ in range(3):  # a warm token, and a new one: both served, GitLab asked directly
        assert (await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    maintainer = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}
    assert (await proxy.post(LOAD, json={"query": QUERY}, headers=maintainer)).status == 200
    ready = await proxy.get("/-/readiness")
    assert ready.status == 200 and (await ready.json())["shared"] == "degraded"
    found = samples(await (await proxy.get("/-/metrics")).text())
    assert value(found, "pa_proxy_shared_degraded") == 1
    redis_server.start()  # the same port: the client reconnects by itself
    for _ in range(3):
        assert (await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    found = samples(await (await proxy.get("/-/metrics")).text())
    assert value(found, "pa_proxy_shared_degraded") == 0


async def test_the_rate_limit_holds_across_the_fleet(make_client, shared_settings, cube):
    limited = replace(shared_settings, "limits", rate_limit=0.5, rate_limit_burst=3)
    first, second = await two_proxies(make_client, limited)
    statuses = []
    for proxy in (first, second, first, second):
        statuses.append((await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status)
    # each process's own bucket would let 3 through (6 in all); the fleet's lets 3
    assert statuses == [200, 200, 200, 429]


def test_shared_settings_are_checked():
    from proxy.settings import SettingsError, settings_from_mapping

    with pytest.raises(SettingsError) as refused:
        settings_from_mapping({"redis": {"url": "http://x", "timeout": 0}}, {})
    text = str(refused.value)
    assert "[redis] url" in text and "[redis] signing_key" in text and "[redis] timeout" in text
