"""The fast lane: plain load and dry-run calls served by an asyncio protocol in front of aiohttp's server.

The proxy listens with this protocol; each connection starts here. A request that is

- ``POST`` to ``[/api/v4]/projects/<numeric id>/product_analytics/request/load`` or
  ``.../dry-run``, with no query string;
- HTTP/1.1 and keep-alive, framed by one ``Content-Length`` no larger than
  ``[limits] max_body_bytes``, and wholly read (head and body);
- without ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, and with no repeated
  credential or request-id header;

is served here, through the pipeline's steps (``proxy/pipeline/core.py``) in their order,
as the web adapter's middlewares and views call them. The routes it takes, the headers
it reads and the route names it logs come from ``proxy/pipeline/routes.py``, as the web
adapter's do. Anything else (another route or method, a body still arriving, a
malformed or unusual request) hands the connection, with every byte read of the request,
to aiohttp's server, which parses it from its first byte and serves the connection from
then on. So the fast lane never decides an odd case: aiohttp's parser and the app's
middlewares do, as they did before it existed.

Answers are written as the aiohttp path writes them: the same status, body and headers
(``Content-Type``, ``X-Request-Id``, ``Retry-After``), ``Content-Length`` or chunked
framing, streamed with backpressure, and cut off (the connection aborted) when Cube's
body breaks mid-stream. A caller that hangs up cancels its request. An idle connection,
or one that does not finish a request's head, is closed after ``keepalive_timeout``. On
shutdown the listener closes, idle connections close, and busy ones finish their answer
(``Connection: close``) within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import re
import socket
import time
from collections.abc import Mapping, Sequence

import httptools
import orjson
from aiohttp import web

from proxy.cube.client import Buffered
from proxy.errors import INTERNAL_ERROR, ApiError
from proxy.lane.flow import FlowControl
from proxy.pipeline.coalesce import Outcome
from proxy.pipeline.core import Pipeline
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.request_body import WholeBody
from proxy.pipeline.request_id import REQUEST_ID_HEADER
from proxy.pipeline.routes import ANALYTICS_ROOT, HEADERS_READ, PREFIXES, QUERY_ENDPOINTS, analytics_route
from proxy.tcp import as_stream

log = logging.getLogger(__name__)


def _route_pattern() -> re.Pattern[bytes]:
    """``(prefix)?<root with the project as digits>/(endpoint)``, from the pipeline's route constants."""
    prefixes = "|".join(re.escape(p) for p in PREFIXES if p)
    root = re.escape(ANALYTICS_ROOT).replace(re.escape("{project}"), "([0-9]{1,20})")
    endpoints = "|".join(re.escape(e) for e in QUERY_ENDPOINTS)
    return re.compile(f"({prefixes})?{root}/({endpoints})".encode())


_ROUTE = _route_pattern()
#: (prefix, endpoint) as matched -> the route template the access line names, as aiohttp's router does
_ROUTE_NAMES = {
    (prefix.encode() or None, endpoint.encode()): analytics_route(prefix, endpoint)
    for prefix in PREFIXES
    for endpoint in QUERY_ENDPOINTS
}
#: the request headers the pipeline reads, by lower-cased name
_READ = {name.lower().encode(): name for name in HEADERS_READ}
#: the request id header line's start, between Content-Type and the id
_REQUEST_ID_LINE = b"\r\n" + REQUEST_ID_HEADER.encode() + b": "
#: a request with one of these is aiohttp's to serve
_ELSEWHERE = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding"})
#: headers aiohttp refuses to see twice (its SINGLETON_HEADERS, a test keeps them in step): a bit each
_SINGLETONS = {
    name: 1 << bit
    for bit, name in enumerate(
        (
            b"host",
            b"content-length",
            b"content-location",
            b"content-range",
            b"content-type",
            b"etag",
            b"max-forwards",
            b"server",
            b"transfer-encoding",
            b"user-agent",
        )
    )
}
_HOST = _SINGLETONS[b"host"]
#: a request with more header fields than this goes to aiohttp (which refuses more than 128)
MAX_FIELDS = 64
#: what aiohttp strips around a header's value
_OWS = " \t"
#: a head longer than this, or a line or field longer than aiohttp's limit, is handed to aiohttp to answer
MAX_HEAD = 16 * 1024
MAX_FIELD = 8190
#: while an answer is being written, at most this much of a pipelined next request is read
MAX_PIPELINED = 64 * 1024
#: connections waiting to be accepted
BACKLOG = 4096
_NO_QUERY: Mapping[str, str] = {}
_NO_HEADERS: Mapping[str, str] = {}
_JSON = b"application/json"
_JSON_UTF8 = b"application/json; charset=utf-8"


class _NotHere(Exception):
    """This request is for aiohttp's server."""


def _bare_lf(buffer: bytes, end: int) -> bool:
    """A line in ``buffer[:end]`` ends in LF without CR (aiohttp refuses it; llhttp may not)."""
    return buffer.count(b"\n", 0, end) != buffer.count(b"\r\n", 0, end)


def _close_if_no_request(handler: web.RequestHandler) -> None:
    """Close a handed-over connection whose request's head has not arrived by the lane's deadline."""
    if getattr(handler, "_request_count", 1) == 0 and handler.transport is not None:
        handler.force_close()


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES = {status.value: _status_line(status.value) for status in http.HTTPStatus}


class FastLane:
    """The protocol factory the proxy listens with; one per pipeline and listening socket."""

    def __init__(self, pipeline: Pipeline, aiohttp_server: web.Server) -> None:
        self.pipeline = pipeline
        self.aiohttp_server = aiohttp_server
        settings = pipeline.settings
        self.keepalive_timeout = settings.server.keepalive_timeout
        self.write_timeout = settings.server.write_timeout
        self.max_body = settings.limits.max_body_bytes
        #: requests answered here, and connections handed to aiohttp's server (what tests observe)
        self.served = 0
        self.handed_over = 0
        self.closing = False
        self._connections: set[_Connection] = set()
        self._drained: asyncio.Event | None = None
        self._date = (0, b"")

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    def date(self) -> bytes:
        """The ``Date`` header's value, formatted once per second."""
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]

    def _add(self, conn: _Connection) -> None:
        self._connections.add(conn)

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._drained is not None:
            self._drained.set()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now, busy ones once their answer is written; abort what is left after ``grace`` s."""
        self.closing = True
        for conn in list(self._connections):
            conn.close_when_idle()
        if not self._connections:
            return
        self._drained = asyncio.Event()
        try:
            async with asyncio.timeout(grace):
                await self._drained.wait()
        except TimeoutError:
            for conn in list(self._connections):
                conn.abort()


def _lane(pipeline: Pipeline, runner: web.AppRunner) -> FastLane:
    assert runner.server is not None, "the runner must be set up first"
    lane = FastLane(pipeline, runner.server)
    pipeline.lane_counts = lambda: (lane.served, lane.handed_over)
    pipeline.connections = lambda: {"lane": len(lane._connections), "aiohttp": len(lane.aiohttp_server.connections)}
    return lane


async def listen(
    pipeline: Pipeline, runner: web.AppRunner, host: str, port: int
) -> tuple[asyncio.AbstractServer, FastLane]:
    """Listen through a fast lane in front of ``runner``'s aiohttp server (set up already); port 0 picks one."""
    lane = _lane(pipeline, runner)
    listener = await asyncio.get_running_loop().create_server(lane, host, port, backlog=BACKLOG)
    return listener, lane


async def listen_on(
    pipeline: Pipeline, runner: web.AppRunner, socks: Sequence[socket.socket]
) -> tuple[list[asyncio.AbstractServer], FastLane]:
    """One fast lane accepting on listening sockets the parent made (one or more)."""
    lane = _lane(pipeline, runner)
    loop = asyncio.get_running_loop()
    return [await loop.create_server(lane, sock=sock, backlog=BACKLOG) for sock in socks], lane


class _Connection(asyncio.Protocol):
    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._buffer = b""
        self._busy = False
        #: the connection's one task, serving its requests in turn (made with the first)
        self._worker: asyncio.Task[None] | None = None
        self._pending: tuple[str, str, str, dict[str, str], bytes] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        #: handed over or lost: the worker ends
        self._done = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._reading_paused = False
        self._flow: FlowControl  # made with the transport
        self._close_after = False
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._length: int | None = None
        self._body = b""
        self._begun = False
        self._head_done = False
        self._complete = False
        #: the header fields counted, and the singletons seen (a bit each), of the request being parsed
        self._fields = 0
        self._seen = 0
        #: the peer's address (the access line's client, unless a trusted proxy names another)
        self._peer: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = as_stream(transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._flow = FlowControl(self._loop, self._transport)
        self._lane._add(self)
        if self._lane.closing:
            self._transport.close()
            return
        self._last_active = self._loop.time()
        self._timer = self._loop.call_later(self._lane.keepalive_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane._forget(self)
        if self._timer is not None:
            self._timer.cancel()
        self._done = True
        if self._worker is not None:
            self._worker.cancel()  # the caller hung up: stop its call, as aiohttp's handler_cancellation does
        self._flow.wake()

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if self._busy:
            if len(self._buffer) > MAX_PIPELINED and not self._reading_paused:
                self._reading_paused = True
                assert self._transport is not None
                self._transport.pause_reading()
            return
        self._next()

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._begun:
            raise _NotHere  # a second message in what should be one: the framing is not what it seemed
        self._begun = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD:
            raise _NotHere

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if len(name) + len(value) > MAX_FIELD or self._fields > MAX_FIELDS:
            raise _NotHere
        key = name.lower()
        if key in _ELSEWHERE:
            raise _NotHere
        if (bit := _SINGLETONS.get(key)) is not None:
            if self._seen & bit:
                raise _NotHere  # repeated: aiohttp refuses it
            self._seen |= bit
        if key == b"content-length":  # a singleton: a second one was refused above
            if not value.isdigit():
                raise _NotHere
            self._length = int(value)
        elif (canonical := _READ.get(key)) is not None:
            if canonical in self._headers:
                raise _NotHere  # repeated: aiohttp's rules decide which counts
            self._headers[canonical] = value.decode("latin-1").strip(_OWS)

    def on_headers_complete(self) -> None:
        parser = self._parser
        # asked here: once the message is complete, llhttp has reset what these read
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            raise _NotHere
        if not self._seen & _HOST:
            raise _NotHere  # no Host: aiohttp's to answer
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._complete = True

    # -- requests -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the next request in the buffer, wait for the rest of its head, or hand the connection over."""
        buffer = self._buffer
        if not buffer:
            return
        if self._close_after:
            self._close()
            return
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buffer) >= MAX_HEAD:
                self._hand_over(head_incomplete=True)
            elif _bare_lf(buffer, len(buffer)):
                self._hand_over()
            return  # the head is still arriving; the keep-alive timer bounds the wait
        head = end + 4
        self._url, self._headers, self._length, self._body = b"", {}, None, b""
        self._begun = self._head_done = self._complete = False
        self._fields = self._seen = 0
        parser = self._parser
        try:
            if _bare_lf(buffer, end):
                raise _NotHere
            parser.feed_data(buffer[:head])
            length = self._length
            if not self._head_done or length is None or length > self._lane.max_body or len(buffer) != head + length:
                # a body still arriving, or more bytes behind the request in the same read: aiohttp parses
                # what arrived together as a whole (and refuses all of it if any of it is malformed)
                raise _NotHere
            body = buffer[head : head + length]
            if not self._complete:
                parser.feed_data(body)
            if not self._complete or self._body != body:
                raise _NotHere
            route = _ROUTE.fullmatch(self._url)
            if route is None:
                raise _NotHere
        except (_NotHere, httptools.HttpParserError):
            self._hand_over()
            return
        self._buffer = buffer[head + length :]
        self._busy = True
        self._lane.served += 1
        prefix, project, endpoint = route.groups()
        name = _ROUTE_NAMES[(prefix, endpoint)]
        self._pending = (name, endpoint.decode(), project.decode(), self._headers, self._body)
        worker = self._worker
        if worker is None or worker.done():
            self._worker = self._loop.create_task(self._work())
        elif (wakeup := self._wakeup) is not None and not wakeup.done():
            wakeup.set_result(None)
        # else: the worker itself is here (a pipelined request, read as the last answer ended) and goes on to it

    async def _work(self) -> None:
        """Serve the connection's requests in turn: one task per connection, not one per request."""
        while not self._done:
            request = self._pending
            if request is None:
                waiter = self._wakeup = self._loop.create_future()
                try:
                    await waiter
                finally:
                    self._wakeup = None
                continue
            self._pending = None
            await self._serve(*request)

    def _hand_over(self, head_incomplete: bool = False) -> None:
        """aiohttp's server takes this connection, and what was read of its request, from here on.

        A head still incomplete keeps the deadline it had here: aiohttp's server would start
        a fresh keep-alive timer, giving a slow head twice ``keepalive_timeout``.
        """
        lane = self._lane
        transport = self._transport
        assert transport is not None
        lane._forget(self)
        lane.handed_over += 1
        self._done = True
        if (wakeup := self._wakeup) is not None and not wakeup.done():
            wakeup.set_result(None)  # an idle worker ends
        if self._timer is not None:
            self._timer.cancel()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        handler = lane.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._flow.paused:
            handler.pause_writing()
        buffer, self._buffer = self._buffer, b""
        handler.data_received(buffer)
        if head_incomplete:
            deadline = self._last_active + lane.keepalive_timeout
            self._loop.call_at(deadline, _close_if_no_request, handler)

    async def _serve(self, route: str, endpoint: str, project: str, headers: dict[str, str], raw: bytes) -> None:
        try:
            await self._answer(route, endpoint, project, headers, raw)
        except Exception:
            # a fault outside the answer's own handling (its access line failed to write, say): the
            # answer, if any, is written whole; close the connection rather than leave pipelined
            # requests behind it waiting for the keep-alive timeout
            log.exception("the lane failed serving a request; closing the connection", extra={"event": "unhandled"})
            self._close_after = True
        finally:  # whatever happened, this request is over
            self._busy = False
        self._last_active = self._loop.time()
        transport = self._transport
        assert transport is not None
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._close_after:
            self._close()
        elif not transport.is_closing():
            self._next()

    async def _answer(self, route: str, endpoint: str, project: str, headers: dict[str, str], raw: bytes) -> None:
        """The pipeline's steps, in order (``proxy/pipeline/core.py``); errors become JSON answers; one access line."""
        pipeline = self._lane.pipeline
        exchange = pipeline.begin("POST", route, headers, self._peer, length=len(raw))
        status = 500
        try:
            try:
                pipeline.gate(exchange, headers, _NO_QUERY)
                outcome = await pipeline.answer_query(exchange, endpoint, project, WholeBody(raw), _NO_QUERY)
            except ApiError as exc:
                status = exc.status
                self._write_whole(status, _JSON_UTF8, orjson.dumps(exc.body), exchange, exc.headers)
            except Exception:
                pipeline.fault(exchange)
                self._write_whole(500, _JSON_UTF8, orjson.dumps(INTERNAL_ERROR), exchange)
            else:
                status = 200 if not isinstance(outcome, Buffered) else outcome.status
                await self._send(outcome, exchange)
        except asyncio.CancelledError:  # the caller hung up (``connection_lost`` cancels the connection's task)
            exchange.hung_up = True
            raise
        finally:
            pipeline.finish(exchange, status)

    # -- answers ------------------------------------------------------------------------------

    def _head(
        self, status: int, content_type: bytes, exchange: Exchange, extra: Mapping[str, str], framing: bytes
    ) -> list[bytes]:
        lines = [
            _STATUS_LINES.get(status) or _status_line(status),
            b"Content-Type: ",
            content_type,
            _REQUEST_ID_LINE,
            exchange.request_id.encode("latin-1"),
            b"\r\nDate: ",
            self._lane.date(),
            b"\r\n",
            framing,
        ]
        for name, value in extra.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lane = self._lane
        if lane.closing or lane.pipeline.draining:  # draining: callers move to another worker or replica
            self._close_after = True
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return lines

    def _write_whole(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        exchange: Exchange,
        extra: Mapping[str, str] = _NO_HEADERS,
    ) -> None:
        transport = self._transport
        assert transport is not None
        lines = self._head(status, content_type, exchange, extra, b"Content-Length: %d\r\n" % len(body))
        lines.append(body)
        transport.write(b"".join(lines))
        exchange.bytes_sent = len(body)

    async def _send(self, outcome: Outcome, exchange: Exchange) -> None:
        if isinstance(outcome, Buffered):
            self._write_whole(outcome.status, _JSON, outcome.body, exchange)
            return
        transport = self._transport
        assert transport is not None
        length = outcome.content_length
        chunked = length is None
        framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
        try:
            transport.write(b"".join(self._head(200, _JSON, exchange, _NO_HEADERS, framing)))
            try:
                async for chunk in outcome.chunks():
                    if not chunk:
                        continue
                    if chunked:
                        transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                    else:
                        transport.write(chunk)
                    exchange.bytes_sent += len(chunk)
                    if self._flow.paused:
                        await self._flow.drain(self._lane.write_timeout)
            except Exception as exc:  # Cube's body broke, or a fault: the 200 is out, so only cutting it off is left
                self._lane.pipeline.stream_failed(exchange, exc)
                self.abort()
                return
            if chunked:
                transport.write(b"0\r\n\r\n")
        finally:
            outcome.close()

    # -- closing ------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        """Close a connection idle (or stuck in a request's head) for ``keepalive_timeout``; one timer each."""
        timeout = self._lane.keepalive_timeout
        if self._busy:
            self._timer = self._loop.call_later(timeout, self._check_idle)
            return
        idle = self._loop.time() - self._last_active
        if idle >= timeout:
            transport = self._transport
            if transport is not None and transport.get_write_buffer_size():
                self.abort()  # an answer the caller never read: closing would wait for it for ever
            else:
                self._close()
        else:
            self._timer = self._loop.call_later(timeout - idle, self._check_idle)

    def close_when_idle(self) -> None:
        if self._busy:
            self._close_after = True
        else:
            self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
