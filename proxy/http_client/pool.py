"""A lean HTTP/1.1 keep-alive client for Cube: asyncio protocols, llhttp (httptools), one pool per origin.

Why not aiohttp's ``ClientSession`` here: on the pass-through path its client costs about
two thirds of a bare aiohttp proxy's CPU per request (measured in ``bench/NOTES.md``); this
client does the same exchange for a fraction of that. It does only what the proxy needs of
Cube: ``GET``/``POST`` with a small body, answers by ``Content-Length``, chunked or
close-delimited, read with backpressure, bounded waits, and connections kept alive and
reused. GitLab calls keep aiohttp's client: they are cached, so off the hot path.

Each call's answer must be released (``Response.release``): a connection whose answer was
read to the end returns to its pool; any other is closed, so a half-read answer can never
leak into the next call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools
import yarl

#: pause reading from Cube while this many body bytes wait for the caller; resume below half.
HIGH_WATER = 256 * 1024
#: the answer's status line and headers may not be larger than this.
MAX_HEAD_BYTES = 64 * 1024


#: the answer headers the client reads (its framing); the rest are only counted.
_KEPT_HEADERS = {
    b"content-length": "content-length",
    b"transfer-encoding": "transfer-encoding",
}


class UpstreamError(Exception):
    """Why a call to Cube failed; the message is safe to show a caller."""


class ConnectFailed(UpstreamError):
    pass


class ConnectTimeout(UpstreamError):
    pass


class ReadTimeout(UpstreamError):
    pass


class Disconnected(UpstreamError):
    pass


class BadAnswer(UpstreamError):
    pass


class PoolBusy(UpstreamError):
    """Every connection to the origin stayed busy for as long as a caller may wait for one."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """Cube's answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_paused",
        "_read_timeout",
        "_released",
        "_waiter",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: _Connection, read_timeout: float) -> None:
        self.status = 0
        #: the framing headers (``_KEPT_HEADERS``), names lower-cased; a repeated one keeps its last value.
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._released = False
        self._paused = False
        self.keep_alive = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def read_chunk(self) -> bytes:
        """The next piece of the body, ``b""`` once it is all read."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < HIGH_WATER // 2:
            self._paused = False
            self._conn.resume_reading()
        return chunk

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_chunk():
            yield chunk

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with this answer: reuse the connection if it was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        self._conn.finished(self, reusable=self.at_eof() and self.keep_alive and self._error is None)

    # -- called by the connection -------------------------------------------------------------

    async def _wait(self) -> None:
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout(f"Cube sent nothing for {self._read_timeout:g} s"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if not self._paused and self._buffered > HIGH_WATER:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self._complete = True
        self.keep_alive = keep_alive
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        self._wake()


def as_stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A new TCP connection's transport, with Nagle's algorithm off (answers go out as written)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries at most one call at a time."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        #: kept, not asked for per call: on Python 3.11 asking costs a getpid() system call each time
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._head_bytes = 0
        self._headers_seen = False
        self.closed = False
        self.idle_since = 0.0
        self.calls = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = as_stream(transport)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response._complete:
            self.close()  # nothing was asked: a peer that talks unprompted is not reused
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(BadAnswer("Cube answered with a protocol upgrade"))
            self.close()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            response._fail(cause if isinstance(cause, UpstreamError) else BadAnswer("Cube sent a malformed answer"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and not response._complete:
            framed = "content-length" in response.headers or self._chunked(response)
            if exc is None and self._headers_seen and not framed:
                response._finish(keep_alive=False)  # the body ran until the connection was closed cleanly
            else:
                response._fail(Disconnected("Cube closed the connection before its answer was complete"))
        self._pool._forget(self)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._response is None or self._response._complete:
            raise BadAnswer("Cube sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise BadAnswer(f"Cube's answer headers are larger than {MAX_HEAD_BYTES} bytes")
        key = name.lower()
        if key in _KEPT_HEADERS:  # nothing else of Cube's headers is used, or passed on
            assert self._response is not None
            self._response.headers[_KEPT_HEADERS[key]] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._response is not None
        self._headers_seen = True
        self._response.status = self._parser.get_status_code()
        self._response._wake()

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response._feed(body)

    def on_message_complete(self) -> None:
        assert self._response is not None
        self._response._finish(self._parser.should_keep_alive())

    # -- used by the pool and the response ----------------------------------------------------

    @staticmethod
    def _chunked(response: Response) -> bool:
        return "chunked" in response.headers.get("transfer-encoding", "").lower()

    @property
    def headers_seen(self) -> bool:
        """The current answer's status line and headers have arrived."""
        return self._headers_seen

    def send(self, data: bytes, read_timeout: float) -> Response:
        assert self._transport is not None
        response = self._response = Response(self, read_timeout)
        self._head_bytes = 0
        self._headers_seen = False
        self.calls += 1
        self._transport.write(data)
        return response

    def finished(self, response: Response, reusable: bool) -> None:
        if response is self._response:
            self._response = None
        if reusable and not self.closed:
            self._pool._give_back(self)
        else:
            self.close()

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
            self._pool._forget(self)


class HttpPool:
    """Keep-alive connections to one origin: at most ``limit`` open, idle ones reused newest first."""

    def __init__(
        self,
        origin: Origin,
        *,
        limit: int,
        connect_timeout: float,
        pool_timeout: float = 10.0,
        idle_timeout: float = 4.0,
        dns_ttl: float = 10.0,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        self.origin = origin
        self._limit = limit
        self._connect_timeout = connect_timeout
        #: seconds a caller waits for a connection while all ``limit`` are busy
        self._pool_timeout = pool_timeout
        self._idle_timeout = idle_timeout
        #: the origin's addresses, reused for ``dns_ttl`` s (aiohttp's default) instead of a lookup per connection
        self._dns_ttl = dns_ttl
        self._addresses: list[tuple[int, str]] = []
        self._addresses_until = 0.0
        self._ssl = ssl_context if origin.scheme == "https" else None
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._opening = 0
        #: callers waiting for a connection, oldest first
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closing = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def request(self, head: bytes, body: bytes | None, read_timeout: float) -> Response:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``; await the headers.

        A call that fails on a reused connection before any answer arrived is sent once
        more on a new one: the peer closed an idle connection as the call went out.
        Cube's API calls are reads, so asking twice is safe.
        """
        data = head + body if body else head
        # an idle connection and nobody waiting before us (most calls): take it without a coroutine
        conn = None if self._waiters else self._idle_connection()
        if conn is None:
            conn = await self._acquire()
        reused = conn.calls > 0
        try:
            return await self._exchange(conn, data, read_timeout)
        except Disconnected:
            if not reused:
                raise
        conn = await self._acquire(fresh=True)
        return await self._exchange(conn, data, read_timeout)

    async def _exchange(self, conn: _Connection, data: bytes, read_timeout: float) -> Response:
        response = conn.send(data, read_timeout)
        try:
            while not conn.headers_seen:
                if response._error is not None:
                    raise response._error
                await response._wait()
        except BaseException:
            response.release()
            raise
        return response

    async def _acquire(self, fresh: bool = False) -> _Connection:
        """A connection to send on, in turn: callers that find the pool full are served first come, first served.

        A connection given back while callers wait goes straight to the longest waiting one,
        and a slot freed by a closed connection is reserved for it, so a caller arriving at
        that moment cannot take it past them. (It could before: under load the same callers
        were passed over again and again, and p99 grew to seconds.) A caller waits at most
        ``pool_timeout``, then gets ``PoolBusy``. ``fresh`` skips idle connections; one handed
        over from a call that just finished counts as fresh.
        """
        if not self._waiters:
            if not fresh and (conn := self._idle_connection()) is not None:
                return conn
            if len(self._open) + self._opening < self._limit:
                self._opening += 1
                return await self._connect()
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._pool_timeout):
                handed = await waiter
        except TimeoutError:
            self._abandon(waiter)
            raise PoolBusy(f"all {self._limit} connections to Cube stayed busy for {self._pool_timeout:g} s") from None
        except BaseException:
            self._abandon(waiter)
            raise
        if handed is None:  # a slot, reserved for this caller
            return await self._connect()
        return handed

    def _abandon(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiting caller left: pass on whatever was handed to it meanwhile."""
        if not waiter.done() or waiter.cancelled():
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        elif waiter.exception() is None:
            handed = waiter.result()
            if handed is None:
                self._opening -= 1
                self._slot_freed()
            else:
                self._give_back(handed)

    def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection still worth reusing; stale ones are closed."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        """Open a connection in a slot the caller reserved (counted in ``_opening``)."""
        loop = asyncio.get_running_loop()
        try:
            if self._closing:
                raise ConnectFailed("the proxy is shutting down")
            try:
                async with asyncio.timeout(self._connect_timeout):
                    conn = await self._open_connection(loop)
            except TimeoutError:
                raise ConnectTimeout(f"Cube did not accept a connection within {self._connect_timeout:g} s") from None
            except ssl_module.SSLError as exc:
                raise ConnectFailed(f"TLS with Cube failed: {exc.reason or type(exc).__name__}") from None
            except OSError as exc:
                raise ConnectFailed(f"Cube is unreachable: {exc.strerror or type(exc).__name__}") from None
        except BaseException:
            self._opening -= 1
            self._slot_freed()
            raise
        self._opening -= 1
        if conn.closed:
            self._slot_freed()
            raise Disconnected("Cube closed the connection at once")
        self._open.add(conn)
        return conn

    async def _open_connection(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        """Connect to the origin's addresses in turn; if none answers, look them up afresh next time."""
        if loop.time() >= self._addresses_until:
            found = await loop.getaddrinfo(self.origin.host, self.origin.port, type=socket.SOCK_STREAM)
            self._addresses = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in found]
            self._addresses_until = loop.time() + self._dns_ttl
        failure: OSError = ConnectionRefusedError(f"no address for {self.origin.host}")
        for family, address in self._addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    address,
                    self.origin.port,
                    family=family,
                    ssl=self._ssl,
                    server_hostname=self.origin.host if self._ssl is not None else None,
                )
                return conn
            except ssl_module.SSLError:
                raise
            except OSError as exc:
                failure = exc
        self._addresses_until = 0.0
        raise failure

    def _give_back(self, conn: _Connection) -> None:
        if self._closing:
            conn.close()
        elif not self._hand_over(conn):
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._slot_freed()

    def _slot_freed(self) -> None:
        if len(self._open) + self._opening < self._limit:
            self._hand_over(None)

    def _hand_over(self, conn: _Connection | None) -> bool:
        """Give a connection, or with None a reserved slot to connect in, to the longest waiting caller."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if conn is None:
                    self._opening += 1
                waiter.set_result(conn)
                return True
        return False

    async def close(self) -> None:
        self._closing = True
        for conn in list(self._open):
            conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the proxy is shutting down"))


class HttpClient:
    """One pool per Cube origin, made on first use; the call's URL picks the pool."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float,
        pool_timeout: float = 10.0,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._pools: dict[Origin, HttpPool] = {}
        #: URL -> (pool, request line prefix); the URLs are the configured Cubes' endpoints.
        self._targets: dict[str, tuple[HttpPool, bytes]] = {}
        #: for https Cubes: the system's trusted CAs unless given (made on first use)
        self._ssl = ssl_context

    def _target(self, url: str) -> tuple[HttpPool, bytes]:
        found = self._targets.get(url)
        if found is None:
            parsed = yarl.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.port is None:
                raise ValueError(f"not an http(s) URL: {url!r}")
            origin = Origin(parsed.scheme, parsed.host, parsed.port)
            pool = self._pools.get(origin)
            if pool is None:
                if origin.scheme == "https" and self._ssl is None:
                    self._ssl = ssl_module.create_default_context()
                pool = self._pools[origin] = HttpPool(
                    origin,
                    limit=self._limit,
                    connect_timeout=self._connect_timeout,
                    pool_timeout=self._pool_timeout,
                    ssl_context=self._ssl,
                )
            target = parsed.raw_path_qs or "/"
            found = self._targets[url] = (pool, f"{target} HTTP/1.1\r\nHost: {origin.host_header}\r\n".encode())
        return found

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        read_timeout: float,
    ) -> Response:
        pool, target = self._target(url)
        lines = [method.encode(), b" ", target]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        return await pool.request(b"".join(lines), body, read_timeout)

    def pools(self) -> list[HttpPool]:
        return list(self._pools.values())

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
