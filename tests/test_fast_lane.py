"""The fast lane (proxy/lane/): what it serves itself, what it hands to aiohttp, and how it closes.

Every HTTP test of the suite already runs through the fast lane as well (the ``serving``
fixture), so these tests are about the lane's own edges: that plain loads are really
served by it, that anything else reaches aiohttp's server byte for byte (and gets the
answer aiohttp alone gives), pipelining, timeouts and shutdown.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.pipeline.access_log import AccessLog
from proxy.settings import Settings
from proxy.web.app import create_app
from proxy.web.keys import PIPELINE
from tests.conftest import CUBE_KEY, QUERY, REPORTER, FastLaneTestServer, ProxyTestServer
from tests.fakes.cube import chunked, generated, held_until
from tests.support.waiting import until
from tests.support.wire import CubeAnswer, read_answer

LOAD = "/api/v4/projects/1/product_analytics/request/load"
BODY = orjson.dumps({"query": QUERY})
TOKEN = REPORTER["PRIVATE-TOKEN"]

Start = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start(make_settings: Callable[..., Settings]) -> AsyncIterator[Start]:
    """Start the app behind the fast lane (or, with ``lane=False``, behind aiohttp's server alone)."""
    servers: list[TestServer] = []

    async def make(lane: bool = True, **sections: dict[str, Any]) -> TestServer:
        app = create_app(make_settings(**sections))
        server = FastLaneTestServer(app) if lane else ProxyTestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


def post(path: str = LOAD, body: bytes = BODY, *, headers: str = "", version: str = "1.1") -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: proxy\r\nPRIVATE-TOKEN: {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


async def exchange(server: TestServer, data: bytes, answers: int = 1) -> list[CubeAnswer]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        return [await read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


def lane_of(server: TestServer) -> Any:
    assert isinstance(server, FastLaneTestServer)
    return server.lane


async def test_a_plain_load_is_served_by_the_fast_lane(start, cube):
    server = await start()
    [answer] = await exchange(server, post())
    assert answer.status == 200
    assert orjson.loads(answer.body)["results"]
    assert answer.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f-]{36}-span-1", answer.headers["x-request-id"])
    assert answer.headers["date"].endswith(" GMT")
    assert (lane_of(server).served, lane_of(server).handed_over) == (1, 0)
    [call] = cube.calls
    assert call.claims["appId"] == "gitlab_project_1"
    assert call.headers["X-Request-Id"] == answer.headers["x-request-id"]


SAME_AS_AIOHTTP = {
    "load": post(),
    "dry-run": post("/projects/1/product_analytics/request/dry-run"),
    "a caller's request id": post(headers="X-Request-Id: abc.def\r\n"),
    "query missing": post(body=b"{}"),
    "body not JSON": post(body=b"{nope"),
    "query not an object": post(body=b'{"query": 3}'),
    "limit over Cube's maximum": post(body=orjson.dumps({"query": {**QUERY, "limit": 50_001}})),
    "no credential": post().replace(f"PRIVATE-TOKEN: {TOKEN}\r\n".encode(), b""),
    "a job token": post(headers="JOB-TOKEN: abc\r\n"),
    "an unknown token": post().replace(TOKEN.encode(), b"glpat-nobody-000000000"),
    "a project the caller cannot see": post("/api/v4/projects/999/product_analytics/request/load"),
}


@pytest.mark.parametrize("case", SAME_AS_AIOHTTP)
async def test_the_fast_lane_answers_as_aiohttp_does(start, cube, case):
    """Same bytes in, same status, body and headers out: the lane calls the same functions in the same order."""
    data = SAME_AS_AIOHTTP[case].replace(b"Host: proxy\r\n", b"Host: proxy\r\nX-Request-Id: fixed-id\r\n")
    if b"abc.def" in data:
        data = data.replace(b"X-Request-Id: fixed-id\r\n", b"")
    lane, plain = await start(), await start(lane=False)
    [fast] = await exchange(lane, data)
    [slow] = await exchange(plain, data)
    assert lane_of(lane).served == 1 and lane_of(lane).handed_over == 0
    assert (fast.status, fast.body) == (slow.status, slow.body)
    for header in ("content-type", "x-request-id", "retry-after"):
        assert fast.headers.get(header) == slow.headers.get(header), header


HANDED_OVER = {
    "meta (GET)": b"GET /api/v4/projects/1/product_analytics/request/meta HTTP/1.1\r\nHost: p\r\n"
    + f"PRIVATE-TOKEN: {TOKEN}\r\n\r\n".encode(),
    "a query string": post(LOAD + "?include_token=false"),
    "a project's full path": post("/api/v4/projects/group%2Fproject/product_analytics/request/load"),
    "HTTP/1.0": post(version="1.0"),
    "Connection: close": post(headers="Connection: close\r\n"),
    "Expect: 100-continue": post(headers="Expect: 100-continue\r\n"),
    "a chunked body": (
        f"POST {LOAD} HTTP/1.1\r\nHost: p\r\nPRIVATE-TOKEN: {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(BODY):x}\r\n"
    ).encode()
    + BODY
    + b"\r\n0\r\n\r\n",
    "a repeated token": post(headers=f"PRIVATE-TOKEN: {TOKEN}\r\n"),
    "a body over the limit": post(body=b" " * (1024 * 1024 + 1)),
    "line ends without CR": post().replace(b"\r\n", b"\n"),
    "garbage": b"\x16\x03\x01 not http at all\r\n\r\n",
    "an unknown route": post("/api/v4/projects/1/product_analytics/request/nothing"),
    "a header over aiohttp's field limit": post(headers=f"X-Padding: {'x' * 9000}\r\n"),
    "a request line over aiohttp's limit": post(LOAD + "/" + "x" * 9000),
    "two Content-Lengths": post(headers=f"Content-Length: {len(BODY)}\r\n"),
    # shapes the lane used to serve though aiohttp refuses them or reads them differently
    "no Host": post().replace(b"Host: proxy\r\n", b""),
    "two Hosts": post(headers="Host: other\r\n"),
    "a repeated Content-Type": post(headers="Content-Type: application/json\r\n"),
    "a repeated User-Agent": post(headers="User-Agent: a\r\nUser-Agent: b\r\n"),
    "more than 128 header fields": post(headers="".join(f"X-Field-{n}: v\r\n" for n in range(130))),
    "more header fields than the lane takes": post(headers="".join(f"X-Field-{n}: v\r\n" for n in range(70))),
    "a gzip-encoded body": post(body=gzip.compress(BODY), headers="Content-Encoding: gzip\r\n"),
    "a head ending in LF CR LF": post().replace(b"\r\n\r\n", b"\n\r\n", 1),
}
#: a request aiohttp refuses (400 and a closed connection) or must close after
CLOSING = {"HTTP/1.0", "Connection: close", "line ends without CR", "garbage"}


@pytest.mark.parametrize("case", HANDED_OVER)
async def test_anything_else_reaches_aiohttp_byte_for_byte(start, cube, case):
    lane, plain = await start(), await start(lane=False)
    data = HANDED_OVER[case]
    fast, slow = await exchange_or_close(lane, data), await exchange_or_close(plain, data)
    assert (lane_of(lane).served, lane_of(lane).handed_over) == (0, 1)
    assert fast == slow
    if case in ("a body over the limit", "garbage", "line ends without CR", "two Content-Lengths"):
        assert cube.calls == []


async def exchange_or_close(server: TestServer, data: bytes) -> tuple[int, bytes] | str:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        try:
            answer = await read_answer(reader)
        except asyncio.IncompleteReadError:
            return "closed"
        return answer.status, answer.body
    finally:
        writer.close()


async def test_content_length_with_transfer_encoding_is_aiohttps_to_refuse(start, cube):
    """The classic smuggling shape: the lane does not pick a framing, aiohttp's parser refuses it."""
    server = await start()
    data = post().replace(b"Content-Length:", b"Transfer-Encoding: chunked\r\nContent-Length:")
    answer = await exchange_or_close(server, data)
    assert answer == "closed" or answer[0] == 400
    assert lane_of(server).handed_over == 1
    assert cube.calls == []


async def test_requests_pipelined_in_one_read_go_to_aiohttp_and_are_answered_in_order(start, cube):
    """aiohttp parses what arrives together as a whole (refusing all of it if any is malformed), so
    the lane hands a request with more bytes behind it to aiohttp: three answers, in order."""
    server = await start()
    meta = HANDED_OVER["meta (GET)"]
    dry = post("/api/v4/projects/1/product_analytics/request/dry-run")
    answers = await exchange(server, post() + dry + meta, answers=3)
    assert [a.status for a in answers] == [200, 200, 200]
    assert "results" in orjson.loads(answers[0].body)
    assert "normalizedQueries" in orjson.loads(answers[1].body)
    assert "cubes" in orjson.loads(answers[2].body)
    assert (lane_of(server).served, lane_of(server).handed_over) == (0, 1)


async def test_requests_pipelined_while_an_answer_is_pending_are_served_by_the_lane(start, cube):
    server = await start()
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    dry = post("/api/v4/projects/1/product_analytics/request/dry-run")
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(post())
        await until(lambda: len(cube.calls) == 1)
        writer.write(dry)
        await until(lambda: len(lane_of(server).connections) == 1 and next(iter(lane_of(server).connections))._buffer)
        release.set()
        first, second = await read_answer(reader), await read_answer(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 200) and "normalizedQueries" in orjson.loads(second.body)
    assert (lane_of(server).served, lane_of(server).handed_over) == (2, 0)


async def test_a_handed_over_connection_stays_with_aiohttp(start, cube):
    server = await start()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        for data in (post(), HANDED_OVER["meta (GET)"], post(), post()):
            writer.write(data)
            assert (await read_answer(reader)).status == 200
    finally:
        writer.close()
    assert (lane_of(server).served, lane_of(server).handed_over) == (1, 1)


async def test_a_body_still_arriving_is_read_by_aiohttp(start, cube):
    server = await start()
    data = post()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data[:-5])
        await until(lambda: lane_of(server).handed_over == 1)
        writer.write(data[-5:])
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200 and "results" in orjson.loads(answer.body)
    assert lane_of(server).served == 0


class Transport:
    """A peer's end of a connection, for feeding the protocol byte by byte: records what it is sent."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.sent += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.sent += part

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_a_head_arriving_in_pieces_is_still_the_lanes(start, cube):
    server = await start()
    conn = lane_of(server)()
    transport = Transport()
    conn.connection_made(transport)
    data = post()
    head_end = data.index(b"\r\n\r\n")
    for i in range(head_end):
        conn.data_received(data[i : i + 1])
    assert lane_of(server).served == 0
    conn.data_received(data[head_end:])
    await until(lambda: b"\r\n\r\n" in transport.sent)
    assert transport.sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (lane_of(server).served, lane_of(server).handed_over) == (1, 0)
    conn.connection_lost(None)


async def test_idle_and_stalled_connections_are_closed_after_keepalive_timeout(start, cube):
    server = await start(server={"keepalive_timeout": 0.2})
    reader, writer = await asyncio.open_connection(server.host, server.port)
    stalled_reader, stalled = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(post())
        assert (await read_answer(reader)).status == 200
        stalled.write(post()[:20])  # a head that never ends
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert await asyncio.wait_for(stalled_reader.read(), 10) == b""
    finally:
        writer.close()
        stalled.close()


async def test_shutdown_closes_idle_connections_and_lets_answers_finish(start, cube):
    server = await start()
    idle_reader, idle = await asyncio.open_connection(server.host, server.port)
    idle.write(post())
    assert (await read_answer(idle_reader)).status == 200
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(post(body=orjson.dumps({"query": {**QUERY, "limit": 7}})))
        await until(lambda: len(cube.calls) == 2)
        stopping = asyncio.ensure_future(lane_of(server).shutdown(10))
        assert await asyncio.wait_for(idle_reader.read(), 10) == b""
        assert not stopping.done()
        release.set()
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await asyncio.wait_for(stopping, 10)
    finally:
        idle.close()
        writer.close()


async def test_shutdown_aborts_what_outlives_its_grace(start, cube):
    server = await start()
    cube.behaviour = held_until(asyncio.Event(), cube.default)  # never released
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(post())
        await until(lambda: len(cube.calls) == 1)
        await asyncio.wait_for(lane_of(server).shutdown(0.1), 10)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()


async def test_a_caller_that_hangs_up_stops_its_cube_call(start, cube):
    server = await start()
    cube.behaviour = chunked([b'{"results": [', b"]}"], between=asyncio.Event().wait)
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(post())
    await until(lambda: len(cube.calls) == 1)
    pool = server.app[PIPELINE].services.cube_http.pools()[0]
    assert pool.open_connections == 1
    writer.transport.abort()
    # the call is cancelled: its Cube connection, mid-answer, is closed rather than waited on
    await until(lambda: pool.open_connections == 0)


def test_the_settings_key_for_the_lane_defaults_on(make_settings):
    assert make_settings().server.fast_lane is True
    assert make_settings(server={"fast_lane": False}).server.fast_lane is False
    assert CUBE_KEY  # the fixture's Cube is the one the lane's calls are signed for


async def test_a_caller_that_reads_slowly_holds_back_the_stream_not_the_memory(start, cube):
    """Backpressure: while the caller reads nothing, the lane stops writing, and so stops reading from Cube.

    The lane's write buffer stays near the transport's high-water mark, the Cube client's
    buffer fills to its own mark, and the Cube connection stops being read. Without the
    lane's drain, the lane would take all of Cube's 8 MB into its write buffer instead.
    """
    server = await start(cube={"buffer_limit": 64})
    body_size = 8 * 1024 * 1024
    cube.behaviour = generated(body_size)
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=1024 * 1024)
    pool = None
    try:
        writer.transport.pause_reading()  # the caller reads nothing for now
        writer.write(post())
        await until(lambda: any(conn._flow.paused for conn in lane_of(server).connections), rounds=200_000)
        pool = server.app[PIPELINE].services.cube_http.pools()[0]

        def cube_unread() -> bool:
            return any(not conn._transport.is_reading() for conn in pool._open)

        await until(cube_unread, rounds=200_000)  # the lane stopped taking Cube's body
        (conn,) = lane_of(server).connections
        assert conn._transport.get_write_buffer_size() < 1024 * 1024
        assert lane_of(server).served == 1
        writer.transport.resume_reading()
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 200 and len(answer.body) == int(answer.headers["content-length"]) > body_size - 64 * 1024
    assert answer.body.endswith(b"]}]}") and orjson.loads(answer.body)["results"][0]["data"]


async def test_a_request_pipelined_behind_a_slow_one_waits_with_reading_paused(start, cube):
    """Data pipelined while an answer is pending is read up to a bound, then the socket is left unread."""
    server = await start()
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    big = post(body=orjson.dumps({"query": QUERY, "pad": "x" * (100 * 1024)}))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(post())
        await until(lambda: len(cube.calls) == 1)  # the first is being answered...
        writer.write(big)  # ...when the next arrives
        await until(lambda: any(conn._flow.reading_paused for conn in lane_of(server).connections), rounds=200_000)
        release.set()
        first, second = await read_answer(reader), await read_answer(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 200)
    assert lane_of(server).served == 2


async def test_a_failure_outside_an_answer_closes_the_connection_at_once(start, cube, caplog):
    """A request's handling raising past its answer (here its access line fails to write) must not leave
    the requests pipelined behind it waiting for the keep-alive timeout: the connection closes at once."""

    class BrokenStream:
        def write(self, text: str) -> int:
            raise OSError("stderr is gone")

    caplog.set_level(logging.INFO, logger="proxy.access")
    server = await start()
    pipeline = server.app[PIPELINE]
    pipeline.services.access_log = AccessLog("json", stream=BrokenStream)
    release = asyncio.Event()
    cube.behaviour = held_until(release, cube.default)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(post())
        await until(lambda: len(cube.calls) == 1)
        writer.write(post())  # pipelined behind the first, which is still being answered
        await until(lambda: next(iter(lane_of(server).connections))._buffer)
        release.set()
        first = await read_answer(reader)
        rest = await asyncio.wait_for(reader.read(), 10)  # keepalive_timeout is 75 s: only a close ends this
    finally:
        writer.close()
    assert first.status == 200 and rest == b""
    assert lane_of(server).served >= 1
    assert any("closing the connection" in r.getMessage() for r in caplog.records)


def test_the_lane_refuses_repeats_of_every_header_aiohttp_refuses_repeated():
    from aiohttp.http_parser import SINGLETON_HEADERS

    from proxy.lane.request_head import _SINGLETON_BITS

    assert {name.decode() for name in _SINGLETON_BITS} >= {name.lower() for name in SINGLETON_HEADERS}


async def test_a_request_id_with_spaces_around_it_is_kept_as_aiohttp_keeps_it(start, cube):
    data = post(headers="X-Request-Id:   spaced-id  \t\r\n")
    lane, plain = await start(), await start(lane=False)
    [fast] = await exchange(lane, data)
    [slow] = await exchange(plain, data)
    assert lane_of(lane).served == 1
    assert fast.headers["x-request-id"] == slow.headers["x-request-id"] == "spaced-id-span-1"


async def test_a_slow_head_handed_over_keeps_the_lanes_deadline(start):
    """A head past 16 KiB arriving just before keepalive_timeout went to aiohttp, which started its own timer."""
    server = await start(server={"keepalive_timeout": 2.0})
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    opened = loop.time()
    try:
        writer.write(f"POST {LOAD} HTTP/1.1\r\nHost: proxy\r\n".encode())
        await asyncio.sleep(1.5)  # the slow caller's pace, not a synchronisation
        writer.write(b"".join(f"X-Pad-{n}: {'x' * 1000}\r\n".encode() for n in range(20)))  # past 16 KiB, unfinished
        assert await asyncio.wait_for(reader.read(), 10) == b""
        closed = loop.time() - opened
    finally:
        writer.close()
    assert lane_of(server).handed_over == 1
    assert closed < 2.0 + 0.8, closed  # the lane's deadline, not a fresh one
