"""The real stack (PostgreSQL + Cube), started once per test session, and the proxy in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from proxy.settings import settings_from_mapping
from stack.clickhouse import COLUMNS
from stack.localstack import Stack, cube_token, running_stack
from tests.fakes.gitlab import FakeGitLab
from tests.fakes.gitlab_web import web_ui_routes

STACK_KEY = "integration-tests-cube-api-key-0123456789"
#: the tests' Cube holds a query this long before it answers Continue wait (Cube's own default is 5 s), and its
#: slow cube sleeps this long: every Continue-wait path runs as with Cube's defaults (the query outlasts a hold),
#: in a third of the time
CUBE_HOLD = 1
SLOW_SECONDS = 2.5


@pytest.fixture
def gitlab() -> FakeGitLab:
    """The fake GitLab with its web UI too (sign-in, pages with CSRF tokens), for the browser tests."""
    fake = FakeGitLab()
    fake.extra_routes = web_ui_routes(fake)
    return fake


@pytest.fixture
def gitlab_port(gitlab_url: str) -> int:
    return int(gitlab_url.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack(STACK_KEY, log_queries=True, continue_wait=CUBE_HOLD, slow_seconds=SLOW_SECONDS) as running:
        yield running


#: project 5 has no database on ClickHouse, project 7 a database without the table (the fake GitLab's project 5,
#: and a project 7 the ClickHouse tests add to it); ``default`` and ``analytics`` (a database an operator might
#: name in CUBEJS_DB_NAME) hold rows of an event no demo project has, so a tenant that reads them shows it
NO_DATABASE, NO_TABLE = 5, 7
NOT_THIS_TENANT = "not_this_tenants_event"


@pytest.fixture(scope="session")
def clickhouse_stack() -> Iterator[Stack]:
    """Debian's ClickHouse with GitLab's layout (a database per project), seeded, and Cube on the shipped files."""
    with running_stack(
        STACK_KEY, log_queries=True, store="clickhouse", continue_wait=CUBE_HOLD, slow_seconds=SLOW_SECONDS
    ) as running:
        clickhouse = running.store
        clickhouse.query(f"CREATE DATABASE IF NOT EXISTS gitlab_project_{NO_TABLE}")  # type: ignore[attr-defined]
        for database in ("default", "analytics"):
            clickhouse.query(f"CREATE DATABASE IF NOT EXISTS {database}")  # type: ignore[attr-defined]
            clickhouse.query(  # type: ignore[attr-defined]
                f"CREATE TABLE {database}.snowplow_events AS gitlab_project_1.snowplow_events"
            )
            columns = ", ".join(f"'{NOT_THIS_TENANT}'" if name == "event_name" else name for name, _ in COLUMNS)
            clickhouse.query(  # type: ignore[attr-defined]
                f"INSERT INTO {database}.snowplow_events SELECT {columns} FROM gitlab_project_1.snowplow_events"  # noqa: S608
            )
        yield running


def stack_settings(stack: Stack, gitlab_url: str, cube_url: str | None = None, **cube: Any):
    return settings_from_mapping(
        {
            "gitlab": {"url": gitlab_url},
            "product_analytics": {"cube_api_base_url": cube_url or stack.cube.url, "cube_api_key": STACK_KEY},
            "cube": {"continue_wait_budget": 25.0, **cube},
            "limits": {"rate_limit": 0.0},
        },
        {},
    )


@pytest.fixture
async def proxy(stack, gitlab_url, make_client):
    return await make_client(stack_settings(stack, gitlab_url))


def signed(project_id: int) -> str:
    return cube_token(STACK_KEY, project_id, issuer="tests")


async def direct(
    stack: Stack, project_id: int, endpoint: str, query: dict[str, Any] | None = None, cube_url: str | None = None
) -> tuple[int, Any]:
    """Ask Cube itself, correctly signed, asking again on Continue wait as Cube's client does."""
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            headers = {"Authorization": signed(project_id)}
            url = f"{cube_url or stack.cube.url}/cubejs-api/v1/{endpoint}"
            if query is None:
                resp = await session.get(url, headers=headers)
            else:
                resp = await session.post(url, json={"query": query, "queryType": "multi"}, headers=headers)
            body = await resp.json()
            if body != {"error": "Continue wait"}:
                return resp.status, body
    raise AssertionError("Cube kept saying Continue wait")
