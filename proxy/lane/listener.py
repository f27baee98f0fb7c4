"""The fast lane: plain load and dry-run calls served by an asyncio protocol in front of aiohttp's server.

The proxy listens with ``FastLane``; each connection starts as a lane ``Connection``
(``proxy/lane/connection.py``). The requests it serves (``proxy/lane/request_head.py``
says which) go through the pipeline's steps in their order, as the web adapter's
middlewares and views call them; anything else hands the connection, with every byte read
of the request, to aiohttp's server, which parses it from its first byte and serves the
connection from then on. So the lane never decides an odd case: aiohttp's parser and the
app's middlewares do.

Answers are written as the aiohttp path writes them: the same status, body and headers
(``Content-Type``, ``X-Request-Id``, ``Retry-After``), ``Content-Length`` or chunked
framing, streamed with backpressure under the pipeline's write deadline, and cut off (the
connection aborted) when Cube's body breaks mid-stream. A caller that hangs up cancels its
request. On shutdown the listener closes, idle connections close, and busy ones finish
their answer (``Connection: close``) within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from aiohttp import web

from proxy.lane.answer_head import AnswerHeads
from proxy.lane.connection import Connection
from proxy.pipeline.core import Pipeline
from proxy.pipeline.door_counts import DoorCounts

#: connections waiting to be accepted
BACKLOG = 4096


class FastLane:
    """The protocol factory the proxy listens with; one per pipeline and listening socket."""

    def __init__(self, pipeline: Pipeline, aiohttp_server: web.Server) -> None:
        self.pipeline = pipeline
        self.aiohttp_server = aiohttp_server
        settings = pipeline.settings
        self.keepalive_timeout = settings.server.keepalive_timeout
        self.max_body = settings.limits.max_body_bytes
        #: requests answered here, connections handed to aiohttp's server, and those open here: the
        #: pipeline's own record, which its metrics read
        self.counts: DoorCounts = pipeline.services.lane_counts
        self.heads = AnswerHeads()
        self.closing = False
        self.connections: set[Connection] = set()
        self._drained: asyncio.Event | None = None

    @property
    def served(self) -> int:
        return self.counts.served

    @property
    def handed_over(self) -> int:
        return self.counts.handed_over

    def __call__(self) -> asyncio.Protocol:
        return Connection(self)

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.counts.open = len(self.connections)

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.counts.open = len(self.connections)
        if not self.connections and self._drained is not None:
            self._drained.set()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now, busy ones once their answer is written; abort what is left after ``grace`` s."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_when_idle()
        if not self.connections:
            return
        self._drained = asyncio.Event()
        try:
            async with asyncio.timeout(grace):
                await self._drained.wait()
        except TimeoutError:
            for conn in list(self.connections):
                conn.abort()


async def listen(
    pipeline: Pipeline, runner: web.AppRunner, host: str, port: int
) -> tuple[asyncio.AbstractServer, FastLane]:
    """Listen through a fast lane in front of ``runner``'s aiohttp server (set up already); port 0 picks one."""
    assert runner.server is not None, "the runner must be set up first"
    lane = FastLane(pipeline, runner.server)
    listener = await asyncio.get_running_loop().create_server(lane, host, port, backlog=BACKLOG)
    return listener, lane


async def listen_on(
    pipeline: Pipeline, runner: web.AppRunner, socks: Sequence[socket.socket]
) -> tuple[list[asyncio.AbstractServer], FastLane]:
    """One fast lane accepting on listening sockets the parent made (one or more)."""
    assert runner.server is not None, "the runner must be set up first"
    lane = FastLane(pipeline, runner.server)
    loop = asyncio.get_running_loop()
    return [await loop.create_server(lane, sock=sock, backlog=BACKLOG) for sock in socks], lane
