"""The proxy in front of a real Cube 0.33.65 on Debian's ClickHouse, GitLab's layout: a database per project.

Cube runs the shipped ``cube.js`` and the shipped ClickHouse model (GitLab's members on
``snowplow_events``). Two Cubes read the same server: one as an operator should set it up (no database
name), one with ``CUBEJS_DB_NAME=gitlab_project_1``, as Cube's documentation tells operators to set it and
as the 0.28 driver prefers to a database the configuration names. Every tenant must read its own
database through both, and nothing else: ``default`` and ``analytics`` hold rows of an event no demo
project has.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stack.localstack import Cube, Stack, free_port
from tests.conftest import MAINTAINER, REPORTER
from tests.fakes.gitlab import FakeProject
from tests.stack.conftest import (
    CUBE_HOLD,
    NO_DATABASE,
    NO_TABLE,
    NOT_THIS_TENANT,
    SLOW_SECONDS,
    STACK_KEY,
    direct,
    stack_settings,
)
from tests.support.real_stack import BASE, BY_EVENT, fresh_slow_query, zero_filled_in_order

#: the Cubes every tenancy test runs through: as set up in the docs, and with the variable that used to leak
CUBES = ("no_database_name", "database_name_set")


@pytest.fixture(scope="session")
def named_cube(clickhouse_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cube]:
    """A second Cube on the same ClickHouse, with ``CUBEJS_DB_NAME=gitlab_project_1`` set as well."""
    log = tmp_path_factory.mktemp("named-cube") / "cube.log"
    cube = Cube(free_port(), clickhouse_stack.store, STACK_KEY, log, extra_env={"CUBEJS_DB_NAME": "gitlab_project_1"})
    cube.start()
    yield cube
    cube.stop()


@pytest.fixture(params=CUBES)
def cube_url(request: pytest.FixtureRequest, clickhouse_stack: Stack) -> str:
    if request.param == "database_name_set":
        return str(request.getfixturevalue("named_cube").url)
    return clickhouse_stack.cube.url


@pytest.fixture
async def proxy(clickhouse_stack, cube_url, gitlab_url, make_client):
    return await make_client(stack_settings(clickhouse_stack, gitlab_url, cube_url))


async def load(proxy, project: int, query: dict[str, Any], headers=REPORTER) -> tuple[int, Any]:
    resp = await proxy.post(BASE.format(project, "load"), json={"query": query}, headers=headers)
    return resp.status, await resp.json()


def events(body: dict[str, Any]) -> dict[str, int]:
    return {r["TrackedEvents.eventName"]: int(r["TrackedEvents.count"]) for r in body["results"][0]["data"]}


async def test_each_project_reads_its_own_database_and_nothing_else(clickhouse_stack, cube_url, proxy):
    own = {1: "add_to_cart", 2: "comment"}
    for project, other in ((1, 2), (2, 1)):
        status, through = await load(proxy, project, BY_EVENT)
        assert status == 200, through
        _, straight = await direct(clickhouse_stack, project, "load", BY_EVENT, cube_url)
        assert through["results"][0]["data"] == straight["results"][0]["data"]
        seen = events(through)
        assert sum(seen.values()) == clickhouse_stack.rows[project]
        assert own[project] in seen and own[other] not in seen and NOT_THIS_TENANT not in seen


@pytest.mark.parametrize("project", [NO_DATABASE, NO_TABLE])
async def test_a_project_without_a_database_or_a_table_is_404(clickhouse_stack, cube_url, gitlab, proxy, project):
    gitlab.projects[NO_TABLE] = FakeProject(NO_TABLE, "group/gamma", members={4: 40})
    status, body = await load(proxy, project, BY_EVENT, MAINTAINER)
    assert (status, body) == (404, {"message": "404 Clickhouse Database Not Found"})
    # Cube's own words, as this ClickHouse and driver say them (without "Code: 81/60": the proxy maps both forms)
    cube_status, cube_body = await direct(clickhouse_stack, project, "load", BY_EVENT, cube_url)
    assert cube_status >= 400 and "doesn't exist" in cube_body["error"], cube_body
    assert f"gitlab_project_{project}" in cube_body["error"]


def dashboard_queries(today: dt.date) -> dict[str, dict[str, Any]]:
    """GitLab's built-in visualizations (spec, section 7), each with the dashboard's last-7-days filter."""
    week = [(today - dt.timedelta(days=6)).isoformat(), today.isoformat()]

    def panel(date: str, query: dict[str, Any]) -> dict[str, Any]:
        filters = [{"member": date, "operator": "inDateRange", "values": week}, *query.pop("filters", [])]
        return {**query, "filters": filters, "limit": 100, "timezone": "UTC"}

    page_view = {"member": "TrackedEvents.eventName", "operator": "equals", "values": ["page_view"]}
    events_by_day = {"dimension": "TrackedEvents.derivedTstamp", "granularity": "day"}
    tracked, sessions = "TrackedEvents.derivedTstamp", "Sessions.startAt"
    return {
        "average_session_duration": panel(sessions, {"measures": ["Sessions.averageDurationMinutes"]}),
        "average_sessions_per_user": panel(sessions, {"measures": ["Sessions.averagePerUser"]}),
        "browsers_per_users": panel(
            tracked,
            {
                "measures": ["TrackedEvents.uniqueUsersCount"],
                "dimensions": ["TrackedEvents.agentName", "TrackedEvents.agentVersion"],
            },
        ),
        "daily_active_users": panel(
            tracked, {"measures": ["TrackedEvents.uniqueUsersCount"], "timeDimensions": [events_by_day]}
        ),
        "events_over_time": panel(tracked, {"measures": ["TrackedEvents.count"], "timeDimensions": [events_by_day]}),
        "page_views_over_time": panel(
            tracked,
            {"measures": ["TrackedEvents.pageViewsCount"], "timeDimensions": [events_by_day], "filters": [page_view]},
        ),
        "returning_users_percentage": panel(
            "ReturningUsers.first_timestamp", {"measures": ["ReturningUsers.returningUserPercentage"]}
        ),
        "sessions_over_time": panel(
            sessions,
            {"measures": ["Sessions.count"], "timeDimensions": [{"dimension": sessions, "granularity": "day"}]},
        ),
        "sessions_per_browser": panel(
            sessions, {"measures": ["Sessions.count"], "dimensions": ["Sessions.agentName", "Sessions.agentVersion"]}
        ),
        "top_pages": panel(
            tracked,
            {
                "measures": ["TrackedEvents.pageViewsCount"],
                "dimensions": ["TrackedEvents.pageUrlpath", "TrackedEvents.baseUrl"],
                "filters": [page_view],
            },
        ),
        "total_events": panel(tracked, {"measures": ["TrackedEvents.count"]}),
        "total_pageviews": panel(tracked, {"measures": ["TrackedEvents.pageViewsCount"], "filters": [page_view]}),
        "total_sessions": panel(sessions, {"measures": ["Sessions.count"]}),
        "total_unique_users": panel(tracked, {"measures": ["TrackedEvents.uniqueUsersCount"]}),
        "total_unique_known_users": panel(
            tracked, {"measures": ["TrackedEvents.uniqueUsersCount"], "segments": ["TrackedEvents.knownUsers"]}
        ),
    }


@pytest.mark.parametrize("name", sorted(dashboard_queries(dt.date.today())))
async def test_every_built_in_dashboard_query_answers_with_cubes_rows(clickhouse_stack, proxy, name):
    query = dashboard_queries(dt.date.today())[name]
    status, through = await load(proxy, 1, query)
    assert status == 200, through
    _, straight = await direct(clickhouse_stack, 1, "load", query)
    data = through["results"][0]["data"]
    assert data and data[0], f"{name}: project 1 has events in the last 7 days"
    if not any("granularity" in t for t in query.get("timeDimensions", [])):  # no zero-fill: Cube's rows as they are
        assert data == straight["results"][0]["data"]
    for row in data:
        for measure in query["measures"]:
            assert row[measure] is None or float(row[measure]) >= 0


async def test_missing_days_are_zero_filled_on_clickhouses_timestamps(clickhouse_stack, cube_url, proxy):
    await zero_filled_in_order(clickhouse_stack, proxy, 2, cube_url)


async def test_a_slow_clickhouse_query_is_waited_for_on_the_server(clickhouse_stack, gitlab_url, make_client):
    proxy = await make_client(stack_settings(clickhouse_stack, gitlab_url))
    started = time.monotonic()
    status, body = await load(proxy, 1, fresh_slow_query())
    assert status == 200 and body.get("results", [{}])[0].get("data") == [{"SlowQueries.count": "0"}], body
    # the whole query, longer than Cube's Continue-wait hold: the proxy asked again itself
    assert time.monotonic() - started > SLOW_SECONDS > CUBE_HOLD


def test_the_ignored_database_name_is_said_at_start(named_cube):
    log = named_cube.log_path.read_text()
    assert "CUBEJS_DB_NAME=gitlab_project_1 is ignored on ClickHouse" in log and "remove the variable" in log


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"CUBEJS_DB_TYPE": "mysql"}, "CUBEJS_DB_TYPE=mysql: this tenant configuration keeps projects apart on"),
        ({"CUBEJS_DB_TYPE": "bigquery"}, "set one of them, or ship a configuration that isolates bigquery"),
        ({"CUBEJS_DATASOURCES": "default,events"}, "remove CUBEJS_DATASOURCES"),
    ],
)
def test_cube_refuses_to_start_on_what_the_tenant_file_cannot_keep_apart(clickhouse_stack, tmp_path, env, said):
    cube = Cube(free_port(), clickhouse_stack.store, STACK_KEY, tmp_path / "cube.log", extra_env=env)
    proc = cube.launch()
    try:
        assert proc.wait(60) != 0
    finally:
        cube.stop()
    assert said in cube.log_path.read_text()
