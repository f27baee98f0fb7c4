"""The request head's limits and repeated-header rules are one set (proxy/head_rules.py) for both doors."""

import asyncio

import orjson
import pytest

from proxy.head_rules import MAX_FIELD, MAX_HEADERS, SINGLETONS
from tests.conftest import REPORTER

LOAD = "/api/v4/projects/1/product_analytics/request/load"
BODY = orjson.dumps({"query": {"measures": ["TrackedEvents.count"]}})


def request(*extra: bytes) -> bytes:
    return (
        f"POST {LOAD} HTTP/1.1\r\nHost: p\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n".encode()
        + b"".join(line + b"\r\n" for line in extra)
        + f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )


async def answer(client, data: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        return int(head.split(b" ", 2)[1]), await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


@pytest.mark.handed_over  # past a limit, the lane hands the request to aiohttp's server, which refuses it
@pytest.mark.parametrize(
    "extra",
    [
        [b"User-Agent: " + b"a" * (MAX_FIELD + 1)],  # a field past the field limit
        [b"X-Filler-%d: x" % n for n in range(MAX_HEADERS + 1)],  # more fields than the limit
        [b"Content-Type: application/json"],  # a header aiohttp refuses to see twice (one more below)
    ],
    ids=["field_too_long", "too_many_fields", "repeated_singleton"],
)
async def test_a_head_past_the_rules_is_the_same_400_on_both_doors(client, cube, extra):
    status, body = await answer(client, request(*extra))
    assert status == 400 and "could not be read as HTTP/1.1" in orjson.loads(body)["message"]
    assert cube.calls == []


async def test_a_head_within_the_rules_is_served_on_both_doors(client, cube):
    near = MAX_FIELD - len("User-Agent") - 1
    status, body = await answer(client, request(b"User-Agent: " + b"a" * near))
    assert status == 200 and orjson.loads(body)["results"]


def test_the_rules_are_aiohttps_own():
    from aiohttp.http_parser import SINGLETON_HEADERS

    assert {str(name).lower().encode() for name in SINGLETON_HEADERS} == set(SINGLETONS)
