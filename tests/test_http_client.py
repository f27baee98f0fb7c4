"""The lean Cube client (proxy/http_client/) against real sockets speaking raw HTTP/1.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from proxy.http_client import (
    HIGH_WATER,
    BadAnswer,
    ConnectFailed,
    Disconnected,
    HttpClient,
    HttpPool,
    Origin,
    PoolBusy,
    ReadTimeout,
    State,
)

Handler = Callable[["Peer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@dataclass
class Peer:
    """A TCP server whose every connection runs ``handler``; it records what it was sent."""

    handler: Handler
    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: each request's head, as it arrives
    requests: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cubejs-api/v1/load"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        self.requests.put_nowait(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


@contextlib.asynccontextmanager
async def peer(handler: Handler) -> AsyncIterator[Peer]:
    p = Peer(handler)
    server = await asyncio.start_server(p._serve, "127.0.0.1", 0)
    p.port = server.sockets[0].getsockname()[1]
    try:
        yield p
    finally:
        server.close()


async def keep_alive(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await p.read_request(reader)
        writer.write(OK)
        await writer.drain()


def answers(raw: bytes, hold: bool = True) -> Handler:
    """Read one request, send ``raw``; then keep the connection until the client closes it, or hang up."""

    async def handler(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await p.read_request(reader)
        writer.write(raw)
        await writer.drain()
        if hold:
            await reader.read(1)

    return handler


def answers_once_open(gate: asyncio.Event) -> Handler:
    """Keep-alive: answer each request with OK once ``gate`` is set."""

    async def handler(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await p.read_request(reader)
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    return handler


def caller(rid: str) -> dict[str, str]:
    return {"Authorization": "jwt", "X-Request-Id": rid}


async def call(
    client: HttpClient, url: str, body: bytes | None = b"{}", timeout: float = 5.0, rid: str = "r-span-1"
) -> tuple[int, bytes]:
    response = await client.request("POST", url, caller(rid), body, timeout)
    try:
        return response.status, await response.read()
    finally:
        response.release()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient(limit=8, connect_timeout=2.0)
    yield c
    await c.close()


async def test_a_kept_alive_connection_carries_call_after_call(client: HttpClient) -> None:
    async with peer(keep_alive) as p:
        for _ in range(3):
            assert await call(client, p.url) == (200, b'{"ok":true}')
    assert p.connections == 1
    head = p.heads[0].decode()
    assert head.startswith("POST /cubejs-api/v1/load HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{p.port}\r\n" in head
    assert "Authorization: jwt\r\n" in head and "Content-Length: 2\r\n" in head
    assert "Cookie" not in head and "User-Agent" not in head


async def test_a_chunked_answer_is_read_piece_by_piece(client: HttpClient) -> None:
    async with peer(answers(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1,2,\r\n")) as p:
        response = await client.request("POST", p.url, {}, b"{}", 5.0)
        assert response.status == 200 and response.content_length is None
        assert await response.read_chunk() == b"[1,2,"
        assert not response.at_eof()
        response.release()  # half read: the connection is closed, never reused
        await p.closed.wait()
        assert client.pools()[0].open_connections == 0


async def test_a_body_that_runs_until_close_is_whole_and_the_connection_not_reused(client: HttpClient) -> None:
    async with peer(answers(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1,2,3]", hold=False)) as p:
        assert await call(client, p.url) == (200, b"[1,2,3]")
        assert await call(client, p.url) == (200, b"[1,2,3]")
    assert p.connections == 2


async def test_a_body_that_runs_until_a_reset_is_not_whole(client: HttpClient) -> None:
    async def resets(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await p.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1,2,")
        await writer.drain()
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not a clean end of the body

    async with peer(resets) as p:
        with pytest.raises(Disconnected):
            await call(client, p.url)


async def test_a_reused_connection_the_peer_dropped_is_retried_once_on_a_new_one(client: HttpClient) -> None:
    async def drops_second_call(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await p.read_request(reader)
        writer.write(OK)
        await writer.drain()
        if p.connections == 1:
            await p.read_request(reader)  # the second call on this connection: hang up unanswered
            return
        await keep_alive(p, reader, writer)

    async with peer(drops_second_call) as p:
        assert await call(client, p.url) == (200, b'{"ok":true}')
        assert await call(client, p.url) == (200, b'{"ok":true}')
    assert p.connections == 2
    assert len(p.heads) == 3  # the dropped call was sent again


async def test_a_new_connection_that_drops_the_call_is_not_retried(client: HttpClient) -> None:
    async with peer(answers(b"", hold=False)) as p:
        with pytest.raises(Disconnected):
            await call(client, p.url)
    assert p.connections == 1


async def test_silence_before_the_headers_is_a_read_timeout(client: HttpClient) -> None:
    async with peer(answers(b"")) as p:
        with pytest.raises(ReadTimeout, match=r"0\.2 s"):
            await call(client, p.url, timeout=0.2)
        await p.closed.wait()  # the connection was closed, not returned


async def test_a_body_that_stalls_is_a_read_timeout(client: HttpClient) -> None:
    async with peer(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,")) as p:
        with pytest.raises(ReadTimeout):
            await call(client, p.url, timeout=0.2)


async def test_a_body_cut_short_is_a_disconnect(client: HttpClient) -> None:
    async with peer(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,", hold=False)) as p:
        with pytest.raises(Disconnected):
            await call(client, p.url)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "malformed"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n", "larger than 65536 bytes"),
    ],
)
async def test_a_malformed_answer_is_refused(client: HttpClient, answer: bytes, message: str) -> None:
    async with peer(answers(answer)) as p:
        with pytest.raises(BadAnswer, match=message):
            await call(client, p.url)


async def test_an_answer_nobody_asked_for_closes_the_connection(client: HttpClient) -> None:
    async with peer(answers(OK + OK)) as p:  # a second answer, unasked
        assert await call(client, p.url) == (200, b'{"ok":true}')
        await p.closed.wait()
        assert client.pools()[0].open_connections == 0


async def test_a_refused_connection_is_connect_failed(client: HttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConnectFailed, match="unreachable"):
            await call(client, f"http://127.0.0.1:{port}/x")


async def test_the_pool_never_opens_more_than_its_limit() -> None:
    gate = asyncio.Event()
    gated = answers_once_open(gate)

    client = HttpClient(limit=1, connect_timeout=2.0)
    try:
        async with peer(gated) as p:
            first = asyncio.create_task(call(client, p.url))
            second = asyncio.create_task(call(client, p.url))  # finds the one connection busy, and waits
            await p.requests.get()
            assert client.pools()[0].open_connections == 1
            gate.set()
            assert await first == (200, b'{"ok":true}')
            assert await second == (200, b'{"ok":true}')
            assert p.connections == 1 and len(p.heads) == 2
    finally:
        await client.close()


CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


def order(p: Peer) -> list[str]:
    """The request ids in the order the peer received them."""
    return [
        next(line.split(b": ")[1].decode() for line in head.split(b"\r\n") if line.startswith(b"X-Request-Id"))
        for head in p.heads
    ]


async def served(client: HttpClient, url: str, rid: str) -> int:
    status, _ = await call(client, url, rid=rid)
    return status


async def test_a_connection_given_back_goes_to_the_longest_waiting_caller() -> None:
    """A caller arriving just as a connection comes back does not take it past a caller already waiting."""
    client = HttpClient(limit=1, connect_timeout=2.0)
    try:
        async with peer(keep_alive) as p:
            first = await client.request("POST", p.url, caller("first"), b"{}", 5.0)
            await first.read()  # the whole answer; the one connection is still this call's
            waiting = asyncio.create_task(served(client, p.url, "waiting"))
            await asyncio.sleep(0)  # one turn of the loop: it finds the pool full and waits
            late = asyncio.create_task(served(client, p.url, "late"))  # its first step runs before the waiter's
            first.release()
            assert (await waiting, await late) == (200, 200)
            assert order(p) == ["first", "waiting", "late"]
    finally:
        await client.close()


async def test_a_slot_freed_by_a_closed_connection_goes_to_the_longest_waiting_caller() -> None:
    client = HttpClient(limit=1, connect_timeout=2.0)
    try:
        async with peer(answers(CLOSING)) as p:  # the peer keeps it open: the client closes it
            first = await client.request("POST", p.url, caller("first"), b"{}", 5.0)
            await first.read()
            waiting = asyncio.create_task(served(client, p.url, "waiting"))
            await asyncio.sleep(0)  # one turn of the loop: it finds the pool full and waits
            late = asyncio.create_task(served(client, p.url, "late"))  # its first step runs before the waiter's
            first.release()  # not reusable: closed at once, which frees its slot
            assert (await waiting, await late) == (200, 200)
            assert order(p) == ["first", "waiting", "late"]
    finally:
        await client.close()


async def test_a_caller_waits_for_a_busy_pool_no_longer_than_the_pool_timeout() -> None:
    gate = asyncio.Event()
    client = HttpClient(limit=1, connect_timeout=2.0, pool_timeout=0.2)
    try:
        async with peer(answers_once_open(gate)) as p:
            first = asyncio.create_task(call(client, p.url, rid="first"))
            await p.requests.get()  # the one connection carries the first call
            with pytest.raises(PoolBusy, match=r"^all 1 connections to Cube stayed busy for 0.2 s$"):
                await call(client, p.url, rid="gave-up")
            gate.set()
            assert await first == (200, b'{"ok":true}')
            # the caller that gave up keeps no place in the queue: the connection goes to the next call
            assert await asyncio.wait_for(call(client, p.url, rid="next"), 5) == (200, b'{"ok":true}')
            assert order(p) == ["first", "next"] and p.connections == 1
    finally:
        await client.close()


@pytest.mark.parametrize("handler", [keep_alive, answers(CLOSING)], ids=["connection", "slot"])
async def test_a_waiting_caller_that_leaves_passes_on_what_it_was_handed(handler: Handler) -> None:
    """Handed the connection (or, once it closed, its slot) as it was cancelled: the next caller gets it."""
    client = HttpClient(limit=1, connect_timeout=2.0)
    try:
        async with peer(handler) as p:
            first = await client.request("POST", p.url, caller("first"), b"{}", 5.0)
            await first.read()
            leaving = asyncio.create_task(served(client, p.url, "leaving"))
            await asyncio.sleep(0)  # one turn of the loop: it finds the pool full and waits
            late = asyncio.create_task(served(client, p.url, "late"))
            await asyncio.sleep(0)  # the late caller waits behind it
            first.release()  # handed to the leaving caller...
            leaving.cancel()  # ...which leaves before it could use it
            assert await asyncio.wait_for(late, 5) == 200  # (a lost wake-up would leave it waiting forever)
            with pytest.raises(asyncio.CancelledError):
                await leaving
            # nothing leaked: with a limit of 1, a lost connection or slot would leave the next call waiting forever
            assert await asyncio.wait_for(served(client, p.url, "after"), 5) == 200
            assert order(p) == ["first", "late", "after"]
    finally:
        await client.close()


@contextlib.contextmanager
def counted_lookups(answers: list[str] | None = None) -> Iterator[list[str]]:
    """Record the event loop's address lookups: real ones, or each of ``answers`` once (``"a,b"``: two addresses)."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    hosts: list[str] = []
    planned = list(answers or [])

    async def lookup(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        hosts.append(host)
        if planned:
            addresses = planned.pop(0).split(",")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]
        return await real(host, port, **kwargs)  # type: ignore[arg-type]

    loop.getaddrinfo = lookup  # type: ignore[method-assign]
    try:
        yield hosts
    finally:
        del loop.getaddrinfo


async def test_a_cube_host_is_looked_up_once_per_ttl_not_per_connection() -> None:
    gate = asyncio.Event()
    gated = answers_once_open(gate)

    for ttl, lookups in ((10.0, 1), (0.0, 2)):
        gate.clear()
        async with peer(gated) as p:
            pool = HttpPool(Origin("http", "localhost", p.port), limit=2, connect_timeout=2.0, dns_ttl=ttl)
            with counted_lookups() as hosts:
                head = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n"
                first = asyncio.create_task(pool.request(head, b"{}", 5.0))
                await p.requests.get()
                second = asyncio.create_task(pool.request(head, b"{}", 5.0))  # the first is busy: a new connection
                await p.requests.get()
                gate.set()
                for task in (first, second):
                    response = await task
                    assert await response.read() == b'{"ok":true}'
                    response.release()
            await pool.close()
        assert p.connections == 2
        assert hosts == ["localhost"] * lookups


async def test_addresses_that_refuse_are_looked_up_afresh() -> None:
    async with peer(keep_alive) as p:  # listening on 127.0.0.1 only
        pool = HttpPool(Origin("http", "cube.internal", p.port), limit=2, connect_timeout=2.0)
        head = b"POST /x HTTP/1.1\r\nHost: cube.internal\r\nContent-Length: 2\r\n\r\n"
        # the name first points where nothing listens (Cube moved), then where Cube now is
        with counted_lookups(["127.0.0.2", "127.0.0.1"]) as hosts:
            with pytest.raises(ConnectFailed, match="Cube is unreachable"):
                await pool.request(head, b"{}", 5.0)
            response = await pool.request(head, b"{}", 5.0)  # within the TTL, but the old address failed
            assert await response.read() == b'{"ok":true}'
            response.release()
        await pool.close()
    assert hosts == ["cube.internal", "cube.internal"]


async def test_a_caller_that_goes_away_closes_the_connection(client: HttpClient) -> None:
    async with peer(answers(b"")) as p:
        task = asyncio.create_task(call(client, p.url))
        await p.requests.get()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await p.closed.wait()
        assert client.pools()[0].open_connections == 0


async def test_reading_pauses_while_the_caller_is_slow(client: HttpClient) -> None:
    size = 16 * 1024 * 1024
    sent = asyncio.Event()

    async def large(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await p.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()
        sent.set()
        await keep_alive(p, reader, writer)

    async with peer(large) as p:
        response = await client.request("POST", p.url, {}, b"{}", 5.0)
        # nobody reads: the client stops reading, so the peer cannot finish sending
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sent.wait()), 0.5)
        assert response._buffered <= HIGH_WATER + 256 * 1024
        assert len(await response.read()) == size
        response.release()
        await sent.wait()
        assert await call(client, p.url) == (200, b'{"ok":true}')  # read to the end: reused
        assert p.connections == 1


async def test_a_line_break_in_a_header_is_refused_before_sending(client: HttpClient) -> None:
    async with peer(keep_alive) as p:
        with pytest.raises(ValueError, match="line break"):
            await client.request("POST", p.url, {"X-Request-Id": "a\r\nX-Evil: 1"}, b"{}", 5.0)
    assert p.connections == 0


async def test_closing_the_client_fails_waiters_and_refuses_new_calls() -> None:
    gate = asyncio.Event()

    async def gated(p: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await p.read_request(reader)
        await gate.wait()

    client = HttpClient(limit=1, connect_timeout=2.0)
    async with peer(gated) as p:
        first = asyncio.create_task(call(client, p.url))
        await p.requests.get()
        second = asyncio.create_task(call(client, p.url))
        await asyncio.sleep(0)  # one turn of the loop: the second call starts and waits for the pool
        await client.close()
        with pytest.raises(Disconnected):
            await first
        with pytest.raises(ConnectFailed, match="shutting down"):
            await second
        with pytest.raises(ConnectFailed, match="shutting down"):
            await call(client, p.url)
        gate.set()


def test_the_host_header_leaves_out_default_ports() -> None:
    assert Origin("http", "cube", 80).host_header == "cube"
    assert Origin("https", "cube", 443).host_header == "cube"
    assert Origin("http", "cube", 4000).host_header == "cube:4000"
    assert Origin("http", "::1", 4000).host_header == "[::1]:4000"


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpClient(limit=1, connect_timeout=1.0)._target("ftp://cube/x")


async def test_an_idle_connection_older_than_the_idle_timeout_is_not_reused() -> None:
    async with peer(keep_alive) as p:
        pool = HttpPool(Origin("http", "127.0.0.1", p.port), limit=4, connect_timeout=2.0, idle_timeout=0.0)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(2):
            response = await pool.request(head, None, 5.0)
            await response.read()
            response.release()
        await pool.close()
    assert p.connections == 2


# -- CubeClient's classification of what arrives over the lean client ------------------------------


def chunked_answer(*pieces: bytes, end: bool = True) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for piece in pieces:
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + (b"0\r\n\r\n" if end else b"")


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (chunked_answer(b'{"data":[1,2,3]}'), 200, None),  # the whole body came with the prefix
        (chunked_answer(b'{ "error": "Continue wait" }'), 200, None),
        (chunked_answer(b'{"error":', b'"Query should contain either measures or dimensions"}'), 400, "measures"),
        (chunked_answer(b"<html>not json at all</html>", end=False), 502, "not valid JSON"),
        (chunked_answer(b'{"data":[', end=False), 504, "read timeout"),
    ],
)
async def test_cube_answers_without_a_length_are_classified(
    client: HttpClient, raw: bytes, status: int, message: str | None
) -> None:
    from proxy.cube.client import Buffered, CubeClient
    from proxy.errors import ApiError

    cube = CubeClient(client, read_timeout=0.3, buffer_limit=1024)
    async with peer(answers(raw)) as p:
        if status >= 500:
            with pytest.raises(ApiError) as raised:
                await cube.call(p.url, "POST", "jwt", "r-span-1", b"{}")
            assert raised.value.status == status
            assert message is not None and message in raised.value.body["message"]
            return
        answer = await cube.call(p.url, "POST", "jwt", "r-span-1", b"{}")
    assert isinstance(answer, Buffered)
    assert answer.status == status
    if message is not None:
        assert message in answer.body.decode()


async def test_a_streamed_cube_answer_that_stalls_mid_body_is_a_504(client: HttpClient) -> None:
    from proxy.cube.client import CubeClient, Streamed
    from proxy.errors import ApiError

    cube = CubeClient(client, read_timeout=0.3, buffer_limit=4)
    async with peer(answers(chunked_answer(b'{"data":[' + b"1," * 20, end=False))) as p:
        answer = await cube.call(p.url, "POST", "jwt", "r-span-1", b"{}")
        assert isinstance(answer, Streamed)
        with pytest.raises(ApiError) as raised:
            async for _ in answer.chunks():
                pass
        answer.close()
    assert raised.value.status == 504


async def test_an_https_cube_is_reached_over_verified_tls() -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    p = Peer(keep_alive)
    server = await asyncio.start_server(p._serve, "localhost", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    trusting = HttpClient(limit=2, connect_timeout=2.0, ssl_context=client_context)
    untrusting = HttpClient(limit=2, connect_timeout=2.0)  # the system's CAs do not know this one
    try:
        assert await call(trusting, f"https://localhost:{port}/cubejs-api/v1/load") == (200, b'{"ok":true}')
        assert await call(trusting, f"https://localhost:{port}/cubejs-api/v1/load") == (200, b'{"ok":true}')
        assert p.connections == 1
        assert f"Host: localhost:{port}\r\n" in p.heads[0].decode()
        with pytest.raises(ConnectFailed, match="TLS with Cube failed: CERTIFICATE_VERIFY_FAILED"):
            await call(untrusting, f"https://localhost:{port}/cubejs-api/v1/load")
    finally:
        await trusting.close()
        await untrusting.close()
        server.close()


@contextlib.contextmanager
def black_hole(address: str) -> Iterator[int]:
    """A port on ``address`` where a connection attempt is never answered: a listener whose accept queue is full."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((address, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        filler.connect((address, port))  # takes the queue's only place; later SYNs are dropped
        yield port


async def test_an_address_that_never_answers_costs_only_its_share_of_the_connect_timeout() -> None:
    """Two addresses, the first a black hole: the second is still tried within ``connect_timeout``."""
    with black_hole("127.0.0.3") as port:
        cube = Peer(keep_alive)
        server = await asyncio.start_server(cube._serve, "127.0.0.1", port)  # Cube: the second address, same port
        pool = HttpPool(Origin("http", "cube.internal", port), limit=2, connect_timeout=1.0)
        head = b"GET / HTTP/1.1\r\nHost: cube.internal\r\n\r\n"
        try:
            with counted_lookups(["127.0.0.3,127.0.0.1"]):
                async with await pool.request(head, None, 5.0) as response:
                    assert await response.read() == b'{"ok":true}'
        finally:
            await pool.close()
            server.close()


async def test_an_idle_connection_past_the_idle_timeout_is_closed_even_under_newer_ones() -> None:
    """Connections are reused newest first; an older idle one is closed by the pool's timer, not left open."""
    gate = asyncio.Event()
    async with peer(answers_once_open(gate)) as p:
        pool = HttpPool(Origin("http", "127.0.0.1", p.port), limit=4, connect_timeout=2.0, idle_timeout=0.2)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        first = asyncio.create_task(pool.request(head, None, 5.0))
        await p.requests.get()
        second = asyncio.create_task(pool.request(head, None, 5.0))  # the first is busy: a second connection
        await p.requests.get()
        gate.set()
        for task in (first, second):  # the first goes idle first: the older of the two
            async with await task as response:
                await response.read()
        assert pool.idle_connections == 2
        # keep using the newest connection; the older one sits under it, unused
        for _ in range(20_000):
            async with await pool.request(head, None, 5.0) as response:
                await response.read()
            if p.closed.is_set():
                break
        await asyncio.wait_for(p.closed.wait(), 5.0)
        assert pool.open_connections == 1 and p.connections == 2
        await pool.close()


async def test_a_response_used_with_async_with_is_released() -> None:
    async with peer(keep_alive) as p:
        pool = HttpPool(Origin("http", "127.0.0.1", p.port), limit=1, connect_timeout=2.0)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(3):  # a pool of one: a response not released would leave the next call waiting
            async with await pool.request(head, None, 5.0) as response:
                assert await response.read() == b'{"ok":true}'
        assert p.connections == 1 and pool.idle_connections == 1
        await pool.close()


async def test_a_connection_moves_through_its_states() -> None:
    gate = asyncio.Event()
    async with peer(answers_once_open(gate)) as p:
        pool = HttpPool(Origin("http", "127.0.0.1", p.port), limit=1, connect_timeout=2.0)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        task = asyncio.create_task(pool.request(head, None, 5.0))
        await p.requests.get()
        (conn,) = pool._open
        assert conn.state is State.AWAITING_HEAD
        gate.set()
        response = await task
        assert conn.state in (State.RECEIVING, State.ANSWERED)
        await response.read()
        assert conn.state is State.ANSWERED
        response.release()
        assert conn.state is State.IDLE
        await pool.close()
        assert conn.state is State.CLOSED
