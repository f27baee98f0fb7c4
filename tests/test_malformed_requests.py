"""Every malformed request is a 4xx with a body that says what to fix and echoes nothing, through both doors.

Raw bytes over a socket (a client library would refuse to send most of these): an
unparseable head (a line over the limit, a control character, an obsolete line folding),
credentials that are not text, a body that fails its declared encoding.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib

import orjson
import pytest

from tests.conftest import QUERY, REPORTER
from tests.support.stranger_load import gzip_bomb
from tests.support.wire import read_answer

LOAD = "/api/v4/projects/1/product_analytics/request/load"
SECRET = "s3cr3t-session-value-0000000000000000"
BODY = orjson.dumps({"query": QUERY})


async def send(client, data: bytes) -> tuple[int, bytes, bytes]:
    """The status, head and body of the one answer to ``data`` (the connection closes after it)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def request(headers: list[bytes], body: bytes = BODY, path: bytes = LOAD.encode(), close: bool = True) -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: p", *headers, b"Content-Length: %d" % len(body)]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


UNPARSEABLE = {
    "a cookie over the header limit": [b"Cookie: _gitlab_session=" + SECRET.encode() + b"; pad=" + b"x" * 9000],
    "an overlong CSRF header": [
        b"Cookie: _gitlab_session=" + SECRET.encode(),
        b"X-CSRF-Token: " + SECRET.encode() * 300,
    ],
    "a control character": [b"PRIVATE-TOKEN: " + SECRET.encode() + b"\x01"],
    "an obsolete line folding": [b"PRIVATE-TOKEN: " + SECRET.encode(), b" folded"],
}


@pytest.mark.handed_over  # the lane hands every odd head to aiohttp, whose parser refuses it
@pytest.mark.parametrize("case", UNPARSEABLE, ids=list(UNPARSEABLE))
async def test_an_unparseable_head_is_a_short_400_that_echoes_nothing(client, case, cube):
    status, head, body = await send(client, request(UNPARSEABLE[case]))
    assert status == 400
    assert SECRET.encode() not in head + body
    assert b"application/json" in head
    assert orjson.loads(body)["message"].startswith("400 Bad Request: the request could not be read as HTTP/1.1")
    assert cube.calls == []


@pytest.mark.handed_over
async def test_a_private_token_in_an_overlong_url_is_not_echoed(client, cube):
    path = f"{LOAD}?private_token={SECRET}&pad={'x' * 9000}".encode()
    status, head, body = await send(client, request([], path=path))
    assert status == 400 and SECRET.encode() not in head + body


@pytest.mark.parametrize("token", [b"glpat-\xff\xfe-not-text", b"\xc3\xa9t\xc3\xa9-0000000000", b"glpat-\x80\x80\x80"])
async def test_a_token_that_is_not_ascii_text_is_a_401_on_both_doors(client, cube, token):
    # kept alive, as the lane serves it
    data = request([b"PRIVATE-TOKEN: " + token, b"Content-Type: application/json"], close=False)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert (answer.status, orjson.loads(answer.body)) == (401, {"message": "401 Unauthorized"})
    assert cube.calls == []


@pytest.mark.handed_over  # Content-Encoding: the lane hands it over
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_a_body_that_fails_its_declared_encoding_is_a_400(client, cube, encoding):
    headers = [b"PRIVATE-TOKEN: " + REPORTER["PRIVATE-TOKEN"].encode(), b"Content-Encoding: " + encoding.encode()]
    status, _, body = await send(client, request(headers, body=b"this is not " + encoding.encode()))
    assert status == 400, body
    message = orjson.loads(body)["message"]
    # an encoding aiohttp decodes fails as a body; one it does not know fails as the request's head
    assert "Content-Encoding" in message or message.startswith("400 Bad Request: the request could not be read")
    assert cube.calls == []


@pytest.mark.handed_over
async def test_a_valid_callers_gzip_bomb_is_413_and_costs_cube_nothing(client, cube):
    headers = [b"PRIVATE-TOKEN: " + REPORTER["PRIVATE-TOKEN"].encode(), b"Content-Encoding: gzip"]
    status, _, body = await send(client, request(headers, body=gzip_bomb(200)))
    assert status == 413, body
    assert "larger than the limit of 1048576 bytes" in orjson.loads(body)["message"]
    assert cube.calls == []


@pytest.mark.handed_over
@pytest.mark.parametrize("coding", ["deflate", "x-gzip"])
async def test_a_body_in_another_supported_encoding_is_read(client, cube, coding):
    headers = [b"PRIVATE-TOKEN: " + REPORTER["PRIVATE-TOKEN"].encode(), b"Content-Encoding: " + coding.encode()]
    status, _, body = await send(
        client, request(headers, body=gzip.compress(BODY) if "gzip" in coding else zlib.compress(BODY))
    )
    assert status == 200, body
    assert len(cube.calls) == 1


@pytest.mark.handed_over
async def test_a_body_in_its_declared_encoding_is_read(client, cube):
    headers = [b"PRIVATE-TOKEN: " + REPORTER["PRIVATE-TOKEN"].encode(), b"Content-Encoding: gzip"]
    status, _, body = await send(client, request(headers, body=gzip.compress(BODY)))
    assert status == 200, body
    assert len(cube.calls) == 1
