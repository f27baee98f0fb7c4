"""Spec section 5, row by row: what Cube answered, and what the caller gets."""

import asyncio

import pytest
from aiohttp import web

from tests.conftest import QUERY, REPORTER
from tests.fakes.cube import answer, continue_wait_then, held_until, raw_answer

LOAD = "/api/v4/projects/1/product_analytics/request/load"


async def post(client, body=None, **kwargs):
    return await client.post(LOAD, json={"query": QUERY} if body is None else body, headers=REPORTER, **kwargs)


async def test_success_is_cubes_body(client, cube):
    resp = await post(client)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert (await resp.json())["results"][0]["data"] == [{"TrackedEvents.count": "5"}]


async def test_connection_refused_is_502(make_settings, make_client, unused_tcp_port):
    client = await make_client(
        make_settings(product_analytics={"cube_api_base_url": f"http://127.0.0.1:{unused_tcp_port}"})
    )
    resp = await post(client)
    assert resp.status == 502
    body = await resp.json()
    assert body["message"].startswith("Cube is unreachable")


async def test_connection_reset_is_502(client, cube):
    async def reset(call, request):
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    cube.behaviour = reset
    resp = await post(client)
    assert resp.status == 502
    assert "Cube connection failed" in (await resp.json())["message"]


async def test_invalid_json_is_502(client, cube):
    cube.behaviour = raw_answer(200, b"<html>proxy error</html>", "text/html")
    resp = await post(client)
    assert resp.status == 502
    assert (await resp.json()) == {"message": "Cube answered with a body that is not valid JSON"}


async def test_an_answer_cut_short_inside_its_own_length_is_502(client, cube):
    cube.behaviour = raw_answer(200, b'{"queryType":"regularQuery","results":[{"data":[', "application/json")
    resp = await post(client)
    assert resp.status == 502
    assert (await resp.json()) == {"message": "Cube answered with a body that is not valid JSON"}


async def test_non_json_error_status_is_502(client, cube):
    cube.behaviour = raw_answer(503, b"Service Unavailable", "text/plain")
    resp = await post(client)
    assert resp.status == 502
    assert (await resp.json()) == {"message": "Cube answered 503 without an error message"}


async def test_no_answer_within_the_timeout_is_504(make_settings, make_client, cube):
    never = asyncio.Event()
    cube.behaviour = held_until(never)
    client = await make_client(make_settings(cube={"read_timeout": 0.3}))
    resp = await post(client)
    assert resp.status == 504
    assert "did not answer within 0.3 s" in (await resp.json())["message"]
    never.set()


@pytest.mark.parametrize(
    "error",
    [
        "Code: 81. DB::Exception: Database gitlab_project_1 doesn't exist. (UNKNOWN_DATABASE)",
        "Code: 60. DB::Exception: Table gitlab_project_1.snowplow_events doesn't exist. (UNKNOWN_TABLE)",
        # older ClickHouse servers and drivers (Debian's 18.16 with driver 0.28.64) say it without the code
        "Error: Database gitlab_project_1 doesn't exist",
        "Error: Table gitlab_project_1.snowplow_events doesn't exist.",
        'Error: relation "gitlab_project_1.events" does not exist',
    ],
)
async def test_missing_database_is_404(client, cube, error):
    cube.behaviour = answer(400, {"error": error, "stack": "Error: at /home/cube/node_modules/x.js:1"})
    resp = await post(client)
    assert resp.status == 404
    assert await resp.json() == {"message": "404 Clickhouse Database Not Found"}


async def test_continue_wait_after_the_budget_is_200_unchanged(make_settings, make_client, cube):
    cube.behaviour = continue_wait_then([10**6])
    client = await make_client(make_settings(cube={"continue_wait_budget": 0.0}))
    resp = await post(client)
    assert resp.status == 200
    assert await resp.text() == '{"error": "Continue wait"}'  # Cube's bytes, unchanged


@pytest.mark.parametrize("status", [400, 403, 500])
async def test_other_errors_are_400_with_message_and_error_and_no_stack(client, cube, status):
    cube.behaviour = answer(
        status, {"error": "Cube not found for path 'Nope.count'", "stack": "Error\n at /srv/cube/x.js:1:1"}
    )
    resp = await post(client)
    assert resp.status == 400
    body = await resp.json()
    assert body == {"message": "Cube not found for path 'Nope.count'", "error": "Cube not found for path 'Nope.count'"}
    assert "stack" not in await resp.text()


async def test_large_error_body_stays_bounded(client, cube):
    cube.behaviour = raw_answer(500, b'{"error": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    resp = await post(client)
    assert resp.status == 502
    assert "larger than" in (await resp.json())["message"]


async def test_streamed_error_prefix_is_still_mapped(make_settings, make_client, cube):
    cube.behaviour = answer(200, {"error": "Query timeout", "stack": "x" * 1000})
    client = await make_client(make_settings(cube={"buffer_limit": 10}))
    resp = await post(client)
    assert resp.status == 400
    assert await resp.json() == {"message": "Query timeout", "error": "Query timeout"}


async def test_streamed_non_json_is_502(make_settings, make_client, cube):
    cube.behaviour = raw_answer(200, b"<html>" + b"x" * 1000 + b"</html>", "text/html")
    client = await make_client(make_settings(cube={"buffer_limit": 10}))
    resp = await post(client)
    assert resp.status == 502


# -- malformed requests: a 4xx that says what to fix, and nothing upstream -------------------


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b'{"queryType": "multi"}', 400, "query is missing"),
        (b"not json", 400, "not valid JSON"),
        (b'{"query": [1]}', 400, "query must be a JSON object"),
        (b'{"query": "SELECT 1"}', 400, "query must be a JSON object"),
        (b'{"query": {"limit": 50001}}', 400, "at most 50000"),
        (b'{"query": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, 400, "nested deeper"),
        (b"[]", 400, "must be a JSON object"),
    ],
)
async def test_bad_input_costs_nothing_upstream(client, cube, gitlab, data, status, fragment):
    """Cube is never asked; GitLab only for the caller's credential (authorised before the body is parsed), once."""
    for _ in range(2):
        resp = await client.post(LOAD, data=data, headers={**REPORTER, "Content-Type": "application/json"})
        assert resp.status == status
        assert fragment in await resp.text()
    assert cube.calls == []
    assert gitlab.calls["/api/v4/user"] == 1


@pytest.mark.handed_over
async def test_body_over_the_limit_is_413(make_settings, make_client, cube):
    client = await make_client(make_settings(limits={"max_body_bytes": 1000, "rate_limit": 0.0}))
    resp = await client.post(LOAD, data=b'{"query": {"x": "' + b"y" * 2000 + b'"}}', headers=REPORTER)
    assert resp.status == 413
    assert "larger than the limit of 1000 bytes" in (await resp.json())["message"]

    async def chunks():
        yield b'{"query": {"x": "'
        yield b"y" * 2000
        yield b'"}}'

    resp = await client.post(LOAD, data=chunks(), headers=REPORTER)  # no Content-Length: chunked
    assert resp.status == 413
    assert cube.calls == []


@pytest.mark.handed_over
async def test_unknown_routes_and_methods_are_json(client):
    resp = await client.get("/api/v4/projects/1/product_analytics/request/nope", headers=REPORTER)
    assert resp.status == 404
    assert await resp.json() == {"message": "404 Not Found"}
    resp = await client.get(LOAD, headers=REPORTER)
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]


async def test_unexpected_failure_is_a_plain_500_without_details(client, cube, monkeypatch):
    def broken(settings, project_id):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr("proxy.cube.tenants.resolve_tenant", broken)
    resp = await post(client)
    assert resp.status == 500
    assert await resp.json() == {"message": "500 Internal Server Error"}
    assert resp.headers["X-Request-Id"].endswith("-span-1")
    assert cube.calls == []


@pytest.mark.handed_over
async def test_a_trickling_body_is_cut_off_with_408(make_settings, make_client, cube, gitlab):
    client = await make_client(make_settings(limits={"body_timeout": 0.3, "rate_limit": 0.0}))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST " + LOAD.encode() + b" HTTP/1.1\r\nHost: x\r\nPRIVATE-TOKEN: glpat-reporter-0000000001\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"query": {'
    )
    await writer.drain()  # and then nothing more: the rest of the body never comes
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 408")
    writer.close()
    assert cube.calls == [] and gitlab.calls["/api/v4/user"] == 1  # authorised before the body was awaited
