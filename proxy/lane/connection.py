"""One fast-lane connection: a small state machine over an asyncio protocol (uvicorn's shape).

States (``State``), and what moves between them:

- ``IDLE``: waiting for a request's head. A whole request the lane serves makes it ``BUSY``;
  anything else hands the connection to aiohttp's server (``HANDED_OVER``). An idle
  connection, or one stuck in a head, is closed after ``keepalive_timeout``.
- ``BUSY``: its one task serves the request through the pipeline and writes the answer;
  then ``IDLE`` again, and the next request already buffered (pipelined) is read.
- ``LAST``: as ``BUSY``, but the connection closes once the answer is written (draining,
  shutting down, or a fault outside the answer's own handling).
- ``CLOSING``: the transport is closing: nothing more is read, no request served (``_work`` waits for the
  loss), and only its loss moves it on.
- ``HANDED_OVER``: aiohttp's server owns the transport now.
- ``CLOSED``: the connection was lost; a request being served is cancelled (the caller hung up).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from proxy.encoding import IDENTITY
from proxy.errors import INTERNAL_ERROR, ApiError
from proxy.lane.answer_head import CHUNKED, JSON, JSON_UTF8, content_length
from proxy.lane.flow import FlowControl
from proxy.lane.request_head import LaneRequest, NotForLane, RequestReader
from proxy.pipeline.answers import Buffered, QueryAnswer
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.request_body import WholeBody
from proxy.tcp import as_stream

if TYPE_CHECKING:
    from proxy.lane.listener import FastLane

log = logging.getLogger(__name__)

#: while an answer is being written, at most this much of a pipelined next request is read
MAX_PIPELINED = 64 * 1024
_NO_QUERY: dict[str, str] = {}


class State(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    LAST = "last"
    CLOSING = "closing"
    HANDED_OVER = "handed over"
    CLOSED = "closed"


# the states as module constants, compared by identity: an Enum's hash and attribute lookup are Python-level
# calls, and the state is checked on every request
IDLE, BUSY, LAST, CLOSING, HANDED_OVER, CLOSED = (
    State.IDLE, State.BUSY, State.LAST, State.CLOSING, State.HANDED_OVER, State.CLOSED
)  # fmt: skip

#: every move a connection may make (h11's way: a move not in the table is a bug, refused loudly)
MOVES: dict[State, frozenset[State]] = {
    IDLE: frozenset({BUSY, HANDED_OVER, CLOSING, CLOSED}),
    BUSY: frozenset({IDLE, LAST, CLOSED}),
    LAST: frozenset({LAST, CLOSING, CLOSED}),
    CLOSING: frozenset({CLOSING, CLOSED}),
    HANDED_OVER: frozenset(),
    CLOSED: frozenset({CLOSED}),
}


class BadMove(RuntimeError):
    """A connection asked to move where its state table does not allow."""


def _close_if_no_request(handler: web.RequestHandler) -> None:
    """Close a handed-over connection whose request's head has not arrived by the lane's deadline."""
    if getattr(handler, "_request_count", 1) == 0 and handler.transport is not None:
        handler.force_close()


class Connection(asyncio.Protocol):
    """One client connection the lane accepted; see the module's states. Every move goes through ``_move``."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        self.state = IDLE
        self._transport: asyncio.Transport | None = None
        self._flow: FlowControl  # made with the transport
        self._reader = RequestReader(lane.max_body)
        self._buffer = b""
        #: the connection's one task, serving its requests in turn (made with the first)
        self._worker: asyncio.Task[None] | None = None
        self._pending: LaneRequest | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        #: the peer's address (the access line's client, unless a trusted proxy names another)
        self._peer: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = as_stream(transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._flow = FlowControl(self._loop, self._transport)
        self._lane.add(self)
        if self._lane.closing:
            self._close()
            return
        self._last_active = self._loop.time()
        self._timer = self._loop.call_later(self._lane.keepalive_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.forget(self)
        if self._timer is not None:
            self._timer.cancel()
        self._move(CLOSED)
        if self._worker is not None:
            self._worker.cancel()  # the caller hung up: stop its call, as aiohttp's handler_cancellation does
        self._flow.wake()

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        state = self.state
        if state is IDLE:
            self._next()
        elif (state is BUSY or state is LAST) and len(self._buffer) > MAX_PIPELINED:
            self._flow.pause_reading()

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # -- requests -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the next request in the buffer, wait for the rest of its head, or hand the connection over."""
        if not self._buffer:
            return
        try:
            request = self._reader.read(self._buffer)
        except NotForLane as refused:
            self._hand_over(refused.head_incomplete)
            return
        if request is None:
            return  # the head is still arriving
        self._buffer = self._buffer[request.size :]
        self._move(BUSY)
        self._lane.counts.served += 1
        self._pending = request
        worker = self._worker
        if worker is None or worker.done():
            self._worker = self._loop.create_task(self._work())
        elif (wakeup := self._wakeup) is not None and not wakeup.done():
            wakeup.set_result(None)
        # else: the worker itself is here (a pipelined request, read as the last answer ended) and goes on to it

    async def _work(self) -> None:
        """Serve the connection's requests in turn: one task per connection, not one per request."""
        while (state := self.state) is not HANDED_OVER and state is not CLOSED:
            request = self._pending
            if request is None:
                waiter = self._wakeup = self._loop.create_future()
                try:
                    await waiter
                finally:
                    self._wakeup = None
                continue
            self._pending = None
            await self._serve(request)

    def _hand_over(self, head_incomplete: bool) -> None:
        """aiohttp's server takes this connection, and what was read of its request, from here on.

        A head still incomplete keeps the deadline it had here: aiohttp's server would start
        a fresh keep-alive timer, giving a slow head twice ``keepalive_timeout``.
        """
        lane = self._lane
        transport = self._transport
        assert transport is not None
        lane.forget(self)
        lane.counts.handed_over += 1
        self._move(HANDED_OVER)
        if (wakeup := self._wakeup) is not None and not wakeup.done():
            wakeup.set_result(None)  # an idle worker ends
        if self._timer is not None:
            self._timer.cancel()
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

    async def _serve(self, request: LaneRequest) -> None:
        try:
            await self._answer(request)
        except Exception:
            # a fault outside the answer's own handling (its access line failed to write, say): the
            # answer, if any, is written whole; close the connection rather than leave pipelined
            # requests behind it waiting for the keep-alive timeout
            log.exception("the lane failed serving a request; closing the connection", extra={"event": "unhandled"})
            if self.state is BUSY:
                self._move(LAST)
        self._last_active = self._loop.time()
        if (flow := self._flow).reading_paused:
            flow.resume_reading()
        if self.state is LAST:
            self._close()
        elif self.state is BUSY:
            self._move(IDLE)
            self._next()

    async def _answer(self, request: LaneRequest) -> None:
        """The pipeline's steps, in order (``proxy/pipeline/core.py``); errors become JSON answers; one access line."""
        pipeline = self._lane.pipeline
        headers = request.headers
        exchange = pipeline.begin("POST", request.route, headers, self._peer, length=len(request.body))
        status = 500
        try:
            try:
                pipeline.gate(exchange, headers, _NO_QUERY)
                outcome = await pipeline.answer_query(
                    exchange, request.endpoint, request.project, WholeBody(request.body), _NO_QUERY
                )
            except ApiError as exc:
                status = exc.status
                self._write_whole(status, JSON_UTF8, orjson.dumps(exc.body), exchange, exc.headers)
            except Exception:
                pipeline.fault(exchange)
                self._write_whole(500, JSON_UTF8, orjson.dumps(INTERNAL_ERROR), exchange)
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
        self,
        status: int,
        content_type: bytes,
        exchange: Exchange,
        extra: dict[str, str] | None,
        framing: bytes,
        close: bool,
    ) -> list[bytes]:
        """An answer's head, as built: no state of the connection changes here."""
        lane = self._lane
        pipeline = lane.pipeline
        verdict = exchange.cache  # only the answer cache's verdicts have headers: no call for the others
        if verdict is not None and verdict.header is not None and (cache := pipeline.answer_headers(exchange)):
            extra = cache if not extra else {**extra, **cache}
        return lane.heads.head(status, content_type, exchange.request_id, framing, extra, close)

    def _write_whole(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        exchange: Exchange,
        extra: dict[str, str] | None = None,
        coding: str = IDENTITY,
        tag: str | None = None,
    ) -> None:
        """A whole answer in the form the pipeline gives this caller (gzip, ``Vary``, ``ETag``, a 304)."""
        transport = self._transport
        assert transport is not None
        status, body, form = self._lane.pipeline.whole(exchange, status, body, coding, tag)
        extra = form if not extra else {**extra, **form}
        framing = b"" if status == 304 else content_length(len(body))  # a 304 has no body and says no length
        lines = self._head(status, content_type, exchange, extra, framing, self._closes_after_this())
        lines.append(body)
        transport.write(b"".join(lines))
        exchange.bytes_sent = len(body)

    async def _send(self, outcome: QueryAnswer, exchange: Exchange) -> None:
        if isinstance(outcome, Buffered):
            self._write_whole(outcome.status, JSON, outcome.body, exchange, None, outcome.coding, outcome.tag)
            return
        transport = self._transport
        assert transport is not None
        flow = self._flow
        pipeline = self._lane.pipeline
        form = pipeline.stream_headers(exchange)
        length = None if exchange.gzip else outcome.content_length  # gzipped as it goes: its length is unknown
        try:
            transport.write(
                b"".join(
                    self._head(
                        200,
                        JSON,
                        exchange,
                        form,
                        CHUNKED if length is None else content_length(length),
                        self._closes_after_this(),
                    )
                )
            )

            def send(chunk: bytes) -> Awaitable[None] | None:
                if length is None:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                return flow.drain() if flow.paused else None

            if not await pipeline.relay(outcome, exchange, send):
                self.abort()  # the 200 is out: only cutting it off is left
                return
            if length is None:
                transport.write(b"0\r\n\r\n")
        finally:
            outcome.close()

    # -- closing ------------------------------------------------------------------------------

    def _move(self, to: State) -> None:
        """The one way the state changes: a move ``MOVES`` does not list is refused (a bug, said loudly)."""
        if to not in MOVES[self.state]:
            raise BadMove(f"a lane connection cannot go from {self.state.value} to {to.value}")
        self.state = to

    def _closes_after_this(self) -> bool:
        """Whether the answer being written is the connection's last (the lane closing, or the pipeline draining):
        decided here, before the answer's head is built, and the connection moved to ``LAST`` if so."""
        lane = self._lane
        close = lane.closing or lane.pipeline.closes_connections or self.state is LAST
        if close and self.state is BUSY:
            self._move(LAST)
        return close

    def _check_idle(self) -> None:
        """Close a connection idle (or stuck in a request's head) for ``keepalive_timeout``; one timer each."""
        timeout = self._lane.keepalive_timeout
        if (state := self.state) is BUSY or state is LAST:
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
        if (state := self.state) is BUSY or state is LAST:
            self._move(LAST)
        elif state is not HANDED_OVER:
            self._close()

    def _close(self) -> None:
        if self.state is not CLOSED:
            self._move(CLOSING)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
