"""One keep-alive connection to Cube, with its state in one explicit value (as httpcore's connections keep theirs)."""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol

import httptools

from proxy.http_client.errors import BadAnswer, Disconnected, UpstreamError
from proxy.http_client.response import Response
from proxy.tcp import as_stream

#: the answer's status line and headers may not be larger than this.
MAX_HEAD_BYTES = 64 * 1024

#: the answer headers the client reads (its framing); the rest are only counted.
_KEPT_HEADERS = {
    b"content-length": "content-length",
    b"transfer-encoding": "transfer-encoding",
}


class State(enum.Enum):
    """Where a connection is in its life; every transition is in ``Connection``."""

    #: open and carrying no call: new, or in its pool's idle list
    IDLE = "idle"
    #: a call went out; its answer's status line and headers have not all arrived
    AWAITING_HEAD = "awaiting_head"
    #: the head arrived; the body is arriving
    RECEIVING = "receiving"
    #: the whole answer arrived; its caller has not released it yet
    ANSWERED = "answered"
    #: closed, by either side; never used again
    CLOSED = "closed"


# module-level aliases: on Python 3.11 reading an Enum member off its class costs six times a global
IDLE, AWAITING_HEAD, RECEIVING, ANSWERED, CLOSED = (
    State.IDLE,
    State.AWAITING_HEAD,
    State.RECEIVING,
    State.ANSWERED,
    State.CLOSED,
)


class Owner(Protocol):
    """What a connection tells its pool."""

    def give_back(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries at most one call at a time.

    Rules it keeps: bytes nobody asked for close it (a peer that talks unprompted is not
    reused); it goes back to its pool only when its answer was read to the end, framed,
    and the peer allows keep-alive; anything else closes it.
    """

    def __init__(self, owner: Owner) -> None:
        self._owner = owner
        #: kept, not asked for per call: on Python 3.11 asking costs a getpid() system call each time
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._head_bytes = 0
        self.state = IDLE
        self.idle_since = 0.0
        self.calls = 0

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = as_stream(transport)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or (self.state is not AWAITING_HEAD and self.state is not RECEIVING):
            self.close()  # nothing was asked: a peer that talks unprompted is not reused
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response.fail(BadAnswer("Cube answered with a protocol upgrade"))
            self.close()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            response.fail(cause if isinstance(cause, UpstreamError) else BadAnswer("Cube sent a malformed answer"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        response = self._response
        if response is not None and not response.complete:
            framed = "content-length" in response.headers or _chunked(response)
            if exc is None and was is RECEIVING and not framed:
                response.finish(keep_alive=False)  # the body ran until the connection was closed cleanly
            else:
                response.fail(Disconnected("Cube closed the connection before its answer was complete"))
        self._owner.forget(self)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state is not AWAITING_HEAD:
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
        self.state = RECEIVING
        self._response.status = self._parser.get_status_code()
        self._response.wake()

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response.feed(body)

    def on_message_complete(self) -> None:
        assert self._response is not None
        self.state = ANSWERED
        self._response.finish(self._parser.should_keep_alive())

    # -- used by the pool and the response ----------------------------------------------------

    def send(self, data: bytes, read_timeout: float) -> Response:
        assert self._transport is not None and self.state is IDLE
        response = self._response = Response(self, read_timeout)
        self._head_bytes = 0
        self.state = AWAITING_HEAD
        self.calls += 1
        self._transport.write(data)
        return response

    def finished(self, response: Response, reusable: bool) -> None:
        if response is self._response:
            self._response = None
        if reusable and self.state is ANSWERED:
            self.state = IDLE
            self._owner.give_back(self)
        else:
            self.close()

    def pause_reading(self) -> None:
        if self._transport is not None and self.state is not CLOSED:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self.state is not CLOSED:
            self._transport.resume_reading()

    def close(self) -> None:
        if self.state is not CLOSED:
            self.state = CLOSED
            if self._transport is not None:
                self._transport.close()
            self._owner.forget(self)


def _chunked(response: Response) -> bool:
    return "chunked" in response.headers.get("transfer-encoding", "").lower()
