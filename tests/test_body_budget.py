"""Authenticate before spending, and the budget of bodies arriving at once, through both doors.

A caller with a made-up credential is refused before its body is parsed (its bad body would be a 400 for a
valid caller); one client address holds at most its share of bytes of bodies being received, while another
address is served; the share comes back when a body is done with."""

from __future__ import annotations

import asyncio
import time

import orjson

from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER, replace

LOAD = "/api/v4/projects/1/product_analytics/request/load"
JSON = {"Content-Type": "application/json"}
#: a body too deep to be a query: a valid caller is told so (400); nobody else is told anything about it
TOO_DEEP = b'{"query": ' + b"[" * 200 + b"]" * 200 + b"}"


async def test_a_made_up_token_is_refused_before_its_body_is_parsed(client, gitlab, cube):
    stranger = await client.post(LOAD, data=TOO_DEEP, headers={"PRIVATE-TOKEN": "glpat-made-up-00000000000", **JSON})
    assert stranger.status == 401
    assert "deep" not in await stranger.text()
    valid = await client.post(LOAD, data=TOO_DEEP, headers={**REPORTER, **JSON})
    assert valid.status == 400 and "deep" in (await valid.json())["message"]
    assert cube.calls == []


async def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        await asyncio.sleep(0.005)


async def test_one_client_address_holds_at_most_its_share_of_bodies_in_flight(make_client, settings, gitlab, cube):
    settings = replace(settings, "server", trusted_proxies=("127.0.0.0/8",))
    settings = replace(
        settings, "limits", bodies_in_flight_bytes=1 << 20, bodies_in_flight_per_client_bytes=1000, rate_limit=0.0
    )
    client = await make_client(settings)
    budget = client.app[PIPELINE].services.body_budget
    # address 192.0.2.1 starts an 800-byte body and stalls inside it
    _, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        f"POST {LOAD} HTTP/1.1\r\nHost: p\r\nX-Forwarded-For: 192.0.2.1\r\n"
        f"PRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\nContent-Type: application/json\r\n"
        "Content-Length: 800\r\n\r\n".encode()
        + b'{"query": {'
    )
    await writer.drain()
    try:
        await until(lambda: budget.held == 800, "the stalled body counted")
        body = orjson.dumps({"query": {**QUERY, "limit": 1}}).ljust(300)  # 300 bytes: over 192.0.2.1's share
        same = await client.post(LOAD, data=body, headers={**REPORTER, **JSON, "X-Forwarded-For": "192.0.2.1"})
        assert same.status == 503 and same.headers["Retry-After"] == "1"
        assert "request bodies" in (await same.json())["message"]
        other = await client.post(LOAD, data=body, headers={**REPORTER, **JSON, "X-Forwarded-For": "192.0.2.2"})
        assert other.status == 200  # another address has its own share
        small = orjson.dumps({"query": {**QUERY, "limit": 2}})  # within what 192.0.2.1 has left
        assert len(small) <= 200
        within = await client.post(LOAD, data=small, headers={**REPORTER, **JSON, "X-Forwarded-For": "192.0.2.1"})
        assert within.status == 200
    finally:
        writer.close()
    await until(lambda: budget.held == 0, "the stalled body's share given back")
    whole_share = await client.post(LOAD, data=body, headers={**REPORTER, **JSON, "X-Forwarded-For": "192.0.2.1"})
    assert whole_share.status == 200
    assert len(cube.calls) == 3  # the refused one cost Cube nothing
