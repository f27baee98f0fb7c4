"""GitLab's contract with Cube 1.x behind the proxy (tests/fakes/cube1x.py, recorded from Cube 1.7.43), through
both doors: the answers pass through, errors keep Cube's ``type`` beside ``message`` and ``error``, the
Continue-wait loop's budget covers 1.x's longer wait, a stopped database is a 503, readiness follows /readyz."""

from __future__ import annotations

import logging

import pytest

from proxy.settings import Settings, settings_from_mapping
from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.fakes.cube1x import Cube1x

LOAD = "/api/v4/projects/1/product_analytics/request/load"
META = "/api/v4/projects/1/product_analytics/request/meta"
#: 1.x's timings, scaled down tenfold (the proxy's budget and timeout with them)
SCALE = 0.1


@pytest.fixture
async def cube1x(aiohttp_server) -> Cube1x:
    double = Cube1x(CUBE_KEY, continue_wait=10.0 * SCALE)
    server = await aiohttp_server(double.app())
    double.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return double


def settings_for(cube: Cube1x, gitlab_url: str, key: str = CUBE_KEY) -> Settings:
    defaults = Settings().cube
    return settings_from_mapping(
        {
            "gitlab": {"url": gitlab_url},
            "product_analytics": {"cube_api_base_url": cube.url, "cube_api_key": key},  # type: ignore[attr-defined]
            "cube": {
                "continue_wait_budget": defaults.continue_wait_budget * SCALE,
                "read_timeout": defaults.read_timeout * SCALE,
                "continue_wait_pause": 0.01,
                "readiness_ttl": 0.0,
            },
            "limits": {"rate_limit": 0.0},
        },
        {},
    )


async def test_a_load_passes_through_without_expresss_headers(make_client, cube1x, gitlab_url):
    client = await make_client(settings_for(cube1x, gitlab_url))
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    body = await resp.json()
    assert resp.status == 200
    assert body["results"][0]["data"] == [{"TrackedEvents.count": "5"}] and body["results"][0]["external"] is False
    assert "X-Powered-By" not in resp.headers and "ETag" not in resp.headers
    assert cube1x.calls == [("load", "gitlab_project_1")]


async def test_an_error_keeps_cubes_type_beside_message_and_error(make_client, cube1x, gitlab_url):
    client = await make_client(settings_for(cube1x, gitlab_url))
    resp = await client.post(LOAD, json={"query": {"measures": ["TrackedEvents.nope"]}}, headers=REPORTER)
    text = "'nope' not found for path 'TrackedEvents.nope'"
    assert (resp.status, await resp.json()) == (400, {"message": text, "error": text, "type": "UserError"})


async def test_the_continue_wait_budget_covers_1x_longer_wait(make_client, cube1x, gitlab_url):
    """1.x says Continue wait after 10 s (0.33: 5 s): a query that takes 12 s is still answered in one call."""
    cube1x.query_seconds = 12.0 * SCALE
    client = await make_client(settings_for(cube1x, gitlab_url))
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200 and (await resp.json())["results"][0]["data"]
    assert len(cube1x.calls) == 2  # one Continue wait, then the data


def test_the_defaults_fit_1x_wait():
    cube = Settings().cube
    assert cube.read_timeout > 10.0  # the first attempt outlasts 1.x's Continue wait (a 504 otherwise)
    assert cube.continue_wait_budget >= 2 * 10.0  # and the budget covers two of them


async def test_a_stopped_database_is_a_503_after_cubes_own_sequence(make_client, cube1x, gitlab_url):
    cube1x.database_up = False
    client = await make_client(settings_for(cube1x, gitlab_url))
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    unavailable = "Cube's database is unavailable"
    assert (resp.status, await resp.json()) == (503, {"message": unavailable, "error": unavailable})
    assert resp.headers["Retry-After"] and len(cube1x.calls) == 2  # Continue wait, then the pool's timeout


@pytest.mark.handed_over  # readiness and meta are aiohttp's
async def test_readiness_follows_readyz_and_meta_passes(make_client, cube1x, gitlab_url):
    client = await make_client(settings_for(cube1x, gitlab_url))
    assert (await client.get("/-/readiness")).status == 200
    meta = await client.get(META, headers=REPORTER)
    assert meta.status == 200 and (await meta.json())["cubes"][0]["name"] == "TrackedEvents"
    cube1x.database_up = False  # /readyz: 500 {"health": "DOWN"}
    down = await client.get("/-/readiness")
    assert down.status == 503 and (await down.json())["cubes"] == {"up": 0, "down": 1}


async def test_a_key_cube_refuses_is_a_400_with_its_message_and_an_error_logged(make_client, cube1x, gitlab_url,
                                                                                 caplog):  # fmt: skip
    client = await make_client(settings_for(cube1x, gitlab_url, key="not-the-key-of-this-cube-0123456789abcd"))
    caplog.set_level(logging.ERROR, logger="proxy.cube.client")
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert (resp.status, (await resp.json())["error"]) == (400, "Invalid token")
    assert [r for r in caplog.records if getattr(r, "event", None) == "cube_key_refused"]
