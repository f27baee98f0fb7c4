"""The proxy in front of a real Cube 0.33.65 on a real PostgreSQL (GitLab is the fake)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from stack.localstack import CUBE_DIR, Cube, free_port
from tests.conftest import MAINTAINER, REPORTER, replace
from tests.stack.conftest import CUBE_HOLD, SLOW_SECONDS, STACK_KEY, direct, stack_settings
from tests.support.real_stack import BASE, BY_EVENT, fresh_slow_query, load, zero_filled_in_order

CLIENT_DIR = Path(__file__).resolve().parents[2] / "stack" / "client"


async def test_load_dry_run_and_meta_agree_with_cube(stack, proxy):
    status, through = await load(proxy, 1, BY_EVENT)
    assert status == 200
    _, straight = await direct(stack, 1, "load", BY_EVENT)
    assert through["results"][0]["data"] == straight["results"][0]["data"]
    assert sum(int(r["TrackedEvents.count"]) for r in through["results"][0]["data"]) == stack.rows[1]

    resp = await proxy.post(BASE.format(1, "dry-run"), json={"query": BY_EVENT}, headers=REPORTER)
    assert resp.status == 200
    _, straight_dry = await direct(stack, 1, "dry-run", BY_EVENT)
    assert (await resp.json())["normalizedQueries"] == straight_dry["normalizedQueries"]

    resp = await proxy.get(BASE.format(1, "meta"), headers=REPORTER)
    assert resp.status == 200
    _, straight_meta = await direct(stack, 1, "meta")
    meta = await resp.json()
    assert meta == straight_meta
    assert {c["name"] for c in meta["cubes"]} >= {"TrackedEvents", "Sessions", "ReturningUsers"}


async def test_every_dashboard_cube_answers(stack, proxy):
    today = dt.date.today()
    week = [(today - dt.timedelta(days=6)).isoformat(), today.isoformat()]
    queries = [
        {
            "measures": ["TrackedEvents.count", "TrackedEvents.uniqueUsersCount", "TrackedEvents.pageViewsCount"],
            "segments": ["TrackedEvents.knownUsers"],
        },
        {
            "measures": [
                "Sessions.count",
                "Sessions.averagePerUser",
                "Sessions.averageDurationMinutes",
                "Sessions.uniqueUsersCount",
                "Sessions.repeatPercent",
            ]
        },
        {
            "measures": ["ReturningUsers.returningUserPercentage"],
            "timeDimensions": [{"dimension": "ReturningUsers.first_timestamp", "dateRange": week}],
        },
        {
            "measures": ["Sessions.count"],
            "timeDimensions": [{"dimension": "Sessions.endAt", "granularity": "day", "dateRange": week}],
        },
    ]
    for query in queries:
        status, through = await load(proxy, 2, query)
        assert status == 200, through
        _, straight = await direct(stack, 2, "load", query)
        assert through["results"][0]["data"] == straight["results"][0]["data"]


async def test_missing_days_are_zero_filled_in_order(stack, proxy):
    await zero_filled_in_order(stack, proxy, 1)


async def test_each_projects_caller_sees_only_its_own_rows(stack, proxy):
    _, one = await load(proxy, 1, BY_EVENT)
    _, two = await load(proxy, 2, BY_EVENT)
    names_one = {r["TrackedEvents.eventName"] for r in one["results"][0]["data"]}
    names_two = {r["TrackedEvents.eventName"] for r in two["results"][0]["data"]}
    assert "add_to_cart" in names_one and "add_to_cart" not in names_two
    assert "comment" in names_two and "comment" not in names_one
    total_two = sum(int(r["TrackedEvents.count"]) for r in two["results"][0]["data"])
    assert total_two == stack.rows[2] != stack.rows[1]
    # user 2 is a guest of project 1 and cannot see project 2 at all
    guest = {"PRIVATE-TOKEN": "glpat-guest-000000000002"}
    assert (await load(proxy, 2, BY_EVENT, guest))[0] == 404
    assert (await load(proxy, 1, BY_EVENT, guest))[0] == 401


async def test_a_slow_query_returns_data_in_one_call_within_the_budget(stack, proxy):
    started = time.monotonic()
    status, body = await load(proxy, 1, fresh_slow_query())
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["results"][0]["data"] == [{"SlowQueries.count": "0"}]  # nothing matches, after the pg_sleep
    assert elapsed > SLOW_SECONDS > CUBE_HOLD  # the whole query, longer than Cube's hold: the proxy asked again


async def test_a_slow_query_returns_continue_wait_once_the_budget_is_smaller(stack, gitlab_url, make_client):
    proxy = await make_client(stack_settings(stack, gitlab_url, continue_wait_budget=CUBE_HOLD / 2))
    status, body = await load(proxy, 1, fresh_slow_query())
    assert (status, body) == (200, {"error": "Continue wait"})


async def test_a_tenant_without_a_schema_is_404(proxy):
    status, body = await load(proxy, 5, BY_EVENT, MAINTAINER)  # project 5 has no schema in PostgreSQL
    assert (status, body) == (404, {"message": "404 Clickhouse Database Not Found"})


async def test_an_unknown_member_is_400_with_cubes_message(proxy):
    status, body = await load(proxy, 1, {"measures": ["TrackedEvents.noSuchMeasure"]})
    assert status == 400
    assert "noSuchMeasure" in body["message"]
    assert body["error"] == body["message"]
    assert "stack" not in body


async def test_a_limit_over_cubes_maximum_never_reaches_cube(stack, proxy):
    before = len(stack.cube.events("Load Request"))
    status, body = await load(proxy, 1, {**BY_EVENT, "limit": 50_001})
    assert status == 400 and "50000" in body["message"]
    assert len(stack.cube.events("Load Request")) == before


async def test_cube_stopped_answers_502(stack, gitlab_url, make_client, tmp_path):
    other = Cube(free_port(), stack.pg, STACK_KEY, tmp_path / "cube.log")
    other.start()
    try:
        settings = stack_settings(stack, gitlab_url)
        settings = type(settings)(
            **{
                **settings.__dict__,
                "product_analytics": type(settings.product_analytics)(
                    cube_api_base_url=other.url, cube_api_key=STACK_KEY
                ),
            }
        )
        proxy = await make_client(settings)
        assert (await load(proxy, 1, BY_EVENT))[0] == 200
    finally:
        other.stop()
    status, body = await load(proxy, 1, BY_EVENT)
    assert status == 502
    assert body["message"].startswith("Cube is unreachable")


async def test_concurrent_identical_loads_reach_cube_once(stack, proxy):
    # a slow query (SLOW_SECONDS): every caller arrives while the one upstream flight is still running
    query = fresh_slow_query()
    run = uuid.uuid4().hex[:8]
    results = await asyncio.gather(*(load(proxy, 1, query, **{"X-Request-Id": f"burst{run}-{n}"}) for n in range(30)))
    assert [status for status, _ in results] == [200] * 30
    assert all(body == results[0][1] for _, body in results)
    at_cube = [e for e in stack.cube.events("Load Request") if str(e.get("requestId", "")).startswith(f"burst{run}-")]
    assert len({e["requestId"] for e in at_cube}) == 1  # one call (asked again on Continue wait with its own id)
    assert len(at_cube) <= SLOW_SECONDS // CUBE_HOLD + 2  # a round per hold, and the one that answers


async def test_gitlabs_own_client_works_through_the_proxy(stack, proxy):
    if not (CLIENT_DIR / "node_modules" / "@cubejs-client" / "core").is_dir():
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, check=True)
    base = str(proxy.make_url("")).rstrip("/")
    node = await asyncio.create_subprocess_exec(
        "node",
        "check.js",
        base,
        "1",
        REPORTER["PRIVATE-TOKEN"],
        f"client-{uuid.uuid4().hex}",
        cwd=CLIENT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), 120)
    assert node.returncode == 0, err.decode()
    got = json.loads(out)
    _, events = await direct(stack, 1, "load", got["trackedEventsQuery"])
    assert got["trackedEvents"] == events["results"][0]["data"]
    assert got["trackedEvents"], "the last 7 days have events"
    _, sessions = await direct(stack, 1, "load", got["sessionsQuery"])
    assert got["sessions"] == sessions["results"][0]["data"]
    _, meta = await direct(stack, 1, "meta")
    assert got["cubes"] == sorted(c["name"] for c in meta["cubes"])
    assert (
        got["slow"] == [{"SlowQueries.count": "0"}] and got["slowMs"] > CUBE_HOLD * 1000
    )  # slower than Cube's hold, and it resolved
    assert "noSuchMeasure" in got["error"]  # Cube's message reaches the client's error text


def test_cube_dir_is_the_pinned_install():
    lock = json.loads((CUBE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@cubejs-backend/server-core"]["version"] == "0.33.65"
    assert lock["packages"]["node_modules/@cubejs-backend/postgres-driver"]["version"] == "0.35.81"
    # the newest 0.x ClickHouse driver the npm registry serves (it prefers CUBEJS_DB_NAME: cube.js overrides that)
    assert lock["packages"]["node_modules/@cubejs-backend/clickhouse-driver"]["version"] == "0.28.64"


@pytest.mark.parametrize("app_id", ["gitlab_project_", "gitlab_project_1; DROP SCHEMA x", "other_app", None])
async def test_the_shipped_tenant_file_refuses_a_token_without_a_valid_app_id(stack, app_id):
    """deploy/cube/cube.js (what every Cube here runs): a token whose appId is not gitlab_project_<id> is a 400."""
    import jwt

    now = int(time.time())
    claims = {"iat": now, "exp": now + 60, "appId": app_id}
    token = jwt.encode(claims, STACK_KEY, algorithm="HS256")
    async with aiohttp.ClientSession() as session:
        query = '{"measures":["TrackedEvents.count"]}'
        async with session.get(
            f"{stack.cube.url}/cubejs-api/v1/load", params={"query": query}, headers={"Authorization": token}
        ) as resp:
            body = await resp.json()
    assert resp.status == 400, body
    assert "gitlab_project_<digits>" in body["error"]


def test_the_stack_runs_the_shipped_tenant_file():
    server = (CUBE_DIR / "server.js").read_text()
    assert (
        "'deploy', 'kubernetes', 'base', 'cube.js'" in server and "contextToAppId" not in server
    )  # one file, not a copy


@pytest.mark.parametrize("answer_ttl", [0.0, 60.0], ids=["cache_off", "cache_on"])
async def test_an_order_objects_key_order_gets_cubes_own_rows_for_each(stack, gitlab_url, make_client, answer_ttl):
    """Cube sorts by an ``order`` object's keys in their order: each form gets the rows Cube gives it, and neither
    is answered with the other's (from a flight in common or from the answer cache)."""
    settings = stack_settings(stack, gitlab_url)
    settings = replace(settings, "product_analytics", answer_ttl=answer_ttl)
    proxy = await make_client(settings)
    base = {"measures": ["TrackedEvents.count"], "dimensions": ["TrackedEvents.pageUrlpath"], "limit": 3}
    forms = [
        {**base, "order": {"TrackedEvents.pageUrlpath": "asc", "TrackedEvents.count": "desc"}},
        {**base, "order": {"TrackedEvents.count": "desc", "TrackedEvents.pageUrlpath": "asc"}},
    ]
    rows = []
    for query in forms:
        _, straight = await direct(stack, 1, "load", query)
        for _ in range(2):  # the second time from the answer cache, when it is on
            status, through = await load(proxy, 1, query)
            assert status == 200, through
            assert through["results"][0]["data"] == straight["results"][0]["data"]
        rows.append(straight["results"][0]["data"])
    assert rows[0] != rows[1]  # the two orders do mean two answers on the demo data
