"""The health routes: liveness, readiness (Cube, GitLab) and the runtime view."""

import asyncio
import gc
import os

import pytest

from tests.conftest import QUERY, REPORTER

LOAD = "/api/v4/projects/1/product_analytics/request/load"


@pytest.mark.handed_over
async def test_liveness(client):
    resp = await client.get("/-/liveness")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_the_runtime_view_is_for_loopback_callers_only(client, cube, monkeypatch):
    await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    resp = await client.get("/-/runtime")
    assert resp.status == 200
    view = await resp.json()
    assert view["pid"] == os.getpid() and view["tasks"] >= 1
    assert view["cube_connections"] == {"open": 1, "idle": 1}
    full = []
    gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
    try:
        collected = [await (await client.get("/-/runtime?collect=1")).json() for _ in range(3)]
    finally:
        gc.callbacks.pop()
    assert collected[0]["python_blocks"] > 0 and collected[0]["collected"] is True
    # one full collection, however often it is asked for: the others get the blocks it left
    assert [c["collected"] for c in collected] == [True, False, False] and len(full) == 1
    assert {c["python_blocks"] for c in collected} == {collected[0]["python_blocks"]}
    from aiohttp import web

    monkeypatch.setattr(web.BaseRequest, "remote", property(lambda self: "203.0.113.9"))  # a caller from afar
    assert (await client.get("/-/runtime")).status == 404


@pytest.mark.handed_over
async def test_readiness_follows_cube(client, cube):
    resp = await client.get("/-/readiness")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
    cube.ready = False
    resp = await client.get("/-/readiness")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"


@pytest.mark.handed_over
async def test_readiness_probes_cube_once_per_ttl_however_many_ask(make_settings, make_client, cube):
    """Unauthenticated readiness calls used to reach Cube one for one, over the analytics pool."""
    client = await make_client(make_settings(cube={"readiness_ttl": 60.0}))
    answers = await asyncio.gather(*(client.get("/-/readiness") for _ in range(12)))
    assert [resp.status for resp in answers] == [200] * 12
    assert cube.readyz_calls == 1


async def test_readiness_does_not_wait_for_a_busy_analytics_pool(make_settings, make_client, cube):
    """With every analytics connection to Cube busy, readiness still asks Cube (over its own connections)."""
    from tests.fakes.cube import held_until

    release = asyncio.Event()
    cube.behaviour = held_until(release)
    client = await make_client(make_settings(cube={"pool_size": 1, "queue_timeout": 30.0}))
    load = asyncio.ensure_future(client.post(LOAD, json={"query": QUERY}, headers=REPORTER))
    while not cube.calls:
        await asyncio.sleep(0)
    resp = await client.get("/-/readiness")
    assert resp.status == 200 and cube.readyz_calls == 1
    release.set()
    assert (await load).status == 200


@pytest.mark.handed_over
async def test_not_ready_when_cube_is_unreachable_or_unset(make_settings, make_client, unused_tcp_port):
    client = await make_client(
        make_settings(product_analytics={"cube_api_base_url": f"http://127.0.0.1:{unused_tcp_port}"})
    )
    assert (await client.get("/-/readiness")).status == 503
    from proxy.settings import settings_from_mapping

    client = await make_client(settings_from_mapping({}, {}))
    assert (await client.get("/-/readiness")).status == 503
