"""Differential fuzzing of the two front doors: the same bytes to the lane and to aiohttp alone.

Hypothesis builds request bytes from valid, near-valid and hostile parts (methods, paths,
versions, repeated and malformed headers, credentials in every form, bodies that lie
about their length, bare line feeds, pipelines of several requests) and sends each to a
proxy behind the fast lane and to one behind aiohttp's server alone. The answers (status
and body of each, in order, and whether the connection closed) and the calls that
reached Cube must be the same.

``make test`` runs a seed-stable profile (``derandomize``, a fixed number of examples);
``make fuzz`` runs the long one (``HYPOTHESIS_PROFILE=fuzz``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from proxy.web.app import create_app
from tests.conftest import REPORTER, FastLaneTestServer, ProxyTestServer
from tests.fakes.cube import FakeCube
from tests.support.wire import read_answer

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

TOKEN = REPORTER["PRIVATE-TOKEN"]
#: ends every connection's bytes: both servers answer it and close, unless they closed before
SENTINEL = b"GET /-/liveness HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"

QUERIES = [
    {"measures": ["TrackedEvents.count"]},
    {"measures": ["TrackedEvents.count"], "limit": 5},
    {"measures": ["TrackedEvents.count"], "limit": 50001},
]
BODIES = st.one_of(
    st.sampled_from([orjson.dumps({"query": q}) for q in QUERIES]),
    st.sampled_from([b"", b"{", b"[]", b'{"query": 1}', b'{"queryType": "multi"}', b"\x00\xff", b"{}"]),
    st.builds(lambda q: orjson.dumps({"query": q, "include_token": "maybe"}), st.sampled_from(QUERIES)),
)
PATHS = st.one_of(
    st.builds(
        lambda prefix, project, endpoint, query: (
            f"{prefix}/projects/{project}/product_analytics/request/{endpoint}{query}"
        ),
        st.sampled_from(["/api/v4", "", "/api/v3", "//api/v4"]),
        st.sampled_from(["1", "2", "0", "01", "99999999999999999999", "%C2%B2", "\u0661", "group%2Fproject", "a b"]),
        st.sampled_from(["load", "dry-run", "meta", "LOAD", "load/", "nothing"]),
        st.sampled_from(["", "", "", "?include_token=false", "?private_token=" + TOKEN, "?"]),
    ),
    st.sampled_from(["/-/liveness", "/", "*", "/api/v4/projects/1/product_analytics/request/load#x"]),
)
HEADER_LINES = st.sampled_from(
    [
        "Host: p",
        "Host: other",
        f"PRIVATE-TOKEN: {TOKEN}",
        f"PRIVATE-TOKEN:   {TOKEN}  ",
        f"private-token: {TOKEN}",
        "PRIVATE-TOKEN: glpat-unknown-00000001",
        f"Authorization: Bearer {TOKEN}",
        "Authorization: undefined",
        "Authorization: Basic eDp5",
        "JOB-TOKEN: glcbt-x",
        "Content-Type: application/json",
        "Content-Type: text/plain",
        "User-Agent: fuzz",
        "X-Request-Id: fuzz-id",
        "X-Request-Id: fuzz id with spaces",
        "X-Request-Id:  padded  ",
        "Connection: close",
        "Connection: keep-alive",
        "Expect: 100-continue",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Content-Encoding: gzip",
        "Upgrade: websocket",
        "X-Odd: \x01",
        "Bad Header: x",
        "X-Empty:",
        "Cookie: _gitlab_session=abc",
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid request most of the time, with up to three drawn mutations (each can make it odd or hostile)."""
    method, version, end = "POST", "1.1", "\r\n"
    path = draw(
        st.sampled_from(["/api/v4/projects/1/product_analytics/request/", "/projects/2/product_analytics/request/"])
    )
    path += draw(st.sampled_from(["load", "load", "dry-run", "meta"]))
    body = orjson.dumps({"query": draw(st.sampled_from(QUERIES))})
    headers = ["Host: p", f"PRIVATE-TOKEN: {TOKEN}", "Content-Type: application/json"]
    length = "right"
    bare_lf_at: int | None = None
    for mutation in draw(st.lists(st.integers(0, 9), max_size=3)):
        if mutation == 0:
            # no HEAD: its answers carry a length but no body, which this reader would misframe
            method = draw(st.sampled_from(["GET", "PUT", "DELETE", "P0ST", "post"]))
        elif mutation == 1:
            version = draw(st.sampled_from(["1.0", "2.0", "1.2"]))
        elif mutation == 2:
            path = draw(PATHS)
        elif mutation == 3:
            body = draw(BODIES)
        elif mutation in (4, 5):
            headers.append(draw(HEADER_LINES))
        elif mutation == 6:
            headers.remove(draw(st.sampled_from(headers))) if headers else None
        elif mutation == 7:
            length = draw(st.sampled_from(["none", "short", "long", "twice", "junk"]))
        elif mutation == 8:
            end = "\n"
        else:
            bare_lf_at = draw(st.integers(0, 200))
    lines = [f"{method} {path} HTTP/{version}", *headers]
    if length == "right":
        lines.append(f"Content-Length: {len(body)}")
    elif length == "short" and body:
        lines.append(f"Content-Length: {len(body) - 1}")
    elif length == "long":
        lines.append(f"Content-Length: {len(body) + 1}")
    elif length == "twice":
        lines += [f"Content-Length: {len(body)}"] * 2
    elif length == "junk":
        lines.append("Content-Length: 1x")
    head = end.join(lines) + end + end
    if bare_lf_at is not None:
        cut = bare_lf_at % len(head)
        head = head[:cut] + "\n" + head[cut:]
    return head.encode("utf-8", "surrogateescape") + body


async def answers(server: TestServer, data: bytes) -> list[tuple[int, bytes] | str]:
    """Every answer to ``data`` + the sentinel, in order: (status, body) each, then "closed"."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    got: list[tuple[int, bytes] | str] = []
    try:
        writer.write(data + SENTINEL)
        while True:
            try:
                answer = await read_answer(reader)
            except (asyncio.IncompleteReadError, ConnectionResetError):  # closed, or cut off mid-answer
                got.append("closed")
                return got
            got.append((answer.status, answer.body))
    finally:
        writer.close()


Start = Callable[[bool], Awaitable[TestServer]]


@pytest.fixture
async def pair(make_settings: Callable[..., Any]) -> AsyncIterator[tuple[TestServer, TestServer]]:
    """One proxy behind the lane and one behind aiohttp alone, with short timeouts (bodies that never come)."""
    servers = []
    for lane in (True, False):
        app = create_app(make_settings(server={"keepalive_timeout": 2.0}, limits={"body_timeout": 0.3}))
        server = FastLaneTestServer(app) if lane else ProxyTestServer(app)
        await server.start_server()
        servers.append(server)
    yield servers[0], servers[1]
    for server in servers:
        await server.close()


def cube_calls(cube: FakeCube, since: int) -> list[tuple[str, str, Any]]:
    return [(c.endpoint, c.method, c.body) for c in cube.calls[since:]]


@settings(settings.get_profile(PROFILE))
@given(pipeline=st.lists(requests(), min_size=1, max_size=3))
async def test_the_lane_and_aiohttp_answer_the_same_bytes_the_same_way(pair, cube, pipeline):
    lane, plain = pair
    data = b"".join(pipeline)
    note(f"bytes sent: {data!r}")
    before = len(cube.calls)
    through_lane = await answers(lane, data)
    lane_calls = cube_calls(cube, before)
    before = len(cube.calls)
    through_aiohttp = await answers(plain, data)
    aiohttp_calls = cube_calls(cube, before)
    assert through_lane == through_aiohttp
    assert lane_calls == aiohttp_calls


#: headers the proxy reads (credentials, ids, the caller) and one it does not
BYTE_HEADERS = ["PRIVATE-TOKEN", "Authorization", "Cookie", "X-CSRF-Token", "X-Request-Id", "User-Agent", "X-Other"]


@st.composite
def header_bytes_requests(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    """One request (POST, HEAD or GET) with a header whose value is arbitrary bytes; the connection closes after it."""
    method = draw(st.sampled_from(["POST", "HEAD", "GET"]))
    endpoint = "meta" if method != "POST" else draw(st.sampled_from(["load", "dry-run", "meta"]))
    name = draw(st.sampled_from(BYTE_HEADERS))
    value = draw(st.binary(min_size=1, max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v))
    marker = b"fz" + value  # what must never come back in an answer (but a well-formed request id, echoed by design)
    body = orjson.dumps({"query": QUERIES[0]}) if method == "POST" else b""
    head = (
        f"{method} /api/v4/projects/1/product_analytics/request/{endpoint} HTTP/1.1\r\nHost: p\r\n".encode()
        + (f"PRIVATE-TOKEN: {TOKEN}\r\n".encode() if name != "PRIVATE-TOKEN" else b"")
        + name.encode()
        + b": "
        + marker
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    return method, head + body, marker


async def whole_answer(server: TestServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@settings(settings.get_profile(PROFILE))
@given(request=header_bytes_requests())
async def test_header_values_of_any_bytes_and_head_get_the_same_4xx_or_2xx_from_both_doors(pair, cube, request):
    """Arbitrary bytes in a header: never a 5xx, never echoed, and the same status (and body) from both doors."""
    method, data, marker = request
    note(f"bytes sent: {data!r}")
    lane, plain = pair
    through = [await whole_answer(server, data) for server in (lane, plain)]
    statuses = [int(answer.split(b" ", 2)[1]) for answer in through]
    assert statuses[0] == statuses[1], through
    assert statuses[0] < 500, through
    for answer in through:
        head, _, body = answer.partition(b"\r\n\r\n")
        echoed_id = b"\r\nX-Request-Id: " + marker in head  # a well-formed id comes back (with a span added)
        assert marker not in answer or echoed_id
        if method == "HEAD" and statuses[0] != 400:
            assert body == b""  # (a request that could not be parsed has no method to trust)
    if method != "HEAD":
        assert through[0].partition(b"\r\n\r\n")[2] == through[1].partition(b"\r\n\r\n")[2]
