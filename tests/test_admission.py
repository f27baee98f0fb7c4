"""Admission control: shed new analytics requests while the event loop lags."""

import asyncio
import time

from proxy.limits.overload import LoadShedder
from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER


def test_overloaded_only_above_the_lag_and_it_decays():
    shedder = LoadShedder(max_lag=0.05)
    shedder.observe(0.01)
    assert not shedder.overloaded()
    shedder.observe(0.2)
    assert shedder.overloaded()
    for _ in range(3):
        shedder.observe(0.0)
    assert shedder.lag == 0.2 / 8
    assert not shedder.overloaded()
    assert not LoadShedder(0).enabled


async def test_the_probe_sees_a_blocked_loop():
    shedder = LoadShedder(max_lag=0.02, interval=0.001)
    async with shedder.running():
        await asyncio.sleep(0.005)  # let the probe start its first tick
        deadline = time.perf_counter() + 0.08
        while time.perf_counter() < deadline:  # the loop is blocked: CPU-bound work
            pass
        for _ in range(100):
            if shedder.lag > 0.02:
                break
            await asyncio.sleep(0)
        assert shedder.lag > 0.02
        assert shedder.overloaded()


async def test_shedding_is_off_by_default(client, cube):
    client.app[PIPELINE].services.shedder.observe(10.0)
    resp = await client.post(
        "/api/v4/projects/1/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER
    )
    assert resp.status == 200


async def test_shed_requests_get_503_but_health_is_served(make_settings, make_client, cube, gitlab):
    client = await make_client(make_settings(server={"shed_lag_ms": 50.0}))
    client.app[PIPELINE].services.shedder.observe(10.0)
    resp = await client.post(
        "/api/v4/projects/1/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert await resp.json() == {"message": "The proxy is overloaded; retry shortly"}
    assert (await client.get("/-/liveness")).status == 200
    assert cube.calls == [] and sum(gitlab.calls.values()) == 0
    client.app[PIPELINE].services.shedder.lag = 0.0
    resp = await client.post(
        "/api/v4/projects/1/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER
    )
    assert resp.status == 200
