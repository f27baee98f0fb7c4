"""Cube cannot reach its database: not the caller's fault (spec section 5). 503 with ``Retry-After`` and a message
of ours, never Cube's (which names internal addresses); the details go to the log. Both doors, both Cube shapes."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from proxy.cube.error_map import map_cube_error
from tests.conftest import QUERY, REPORTER
from tests.support.metrics import scrape, value

LOAD = "/api/v4/projects/1/product_analytics/request/load"
UNAVAILABLE = {"message": "Cube's database is unavailable", "error": "Cube's database is unavailable"}
#: what Cube said, as 0.33 says it (400, the database's address) and as 1.x does (its pool gave up)
CUBE_SAYS = [
    (
        400,
        {
            "error": "Error: connect ECONNREFUSED 10.20.30.40:5432",
            "stack": "Error: connect...\\n  at /cube/node_modules/pg",
        },
    ),
    (400, {"type": "UserError", "error": "Error: ResourceRequest timed out (postgres#default)"}),
    (500, {"error": "Connection terminated unexpectedly"}),
]


@pytest.mark.parametrize(("status", "body"), CUBE_SAYS)
async def test_a_database_cube_cannot_reach_is_503_without_its_address(client, cube, caplog, status, body):
    async def down(call, request):
        return web.json_response(body, status=status)

    cube.behaviour = down
    caplog.set_level(logging.WARNING, logger="proxy.cube.client")
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    text = await resp.text()
    assert (resp.status, await resp.json()) == (503, UNAVAILABLE)
    assert resp.headers["Retry-After"] == "5"
    assert "10.20.30.40" not in text and "node_modules" not in text
    logged = [r for r in caplog.records if getattr(r, "event", None) == "cube_database_down"]
    assert logged and body["error"] in logged[0].getMessage()  # the details, for the operator
    found = await scrape(client)
    assert value(found, "pa_proxy_cube_calls_total", endpoint="load", outcome="database_down") == 1


def test_other_cube_errors_keep_their_mapping():
    assert map_cube_error("'nope' not found for path 'TrackedEvents.nope'")[0] == 400
    assert map_cube_error('relation "gitlab_project_9.events" does not exist')[0] == 404
    assert map_cube_error("Error: connect ECONNREFUSED 127.0.0.1:54329") == (503, UNAVAILABLE)
