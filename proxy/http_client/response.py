"""Cube's answer as the client hands it to a caller: status and headers at once, the body as it arrives."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from proxy.http_client.errors import ReadTimeout, UpstreamError

if TYPE_CHECKING:
    from proxy.http_client.connection import Connection

#: pause reading from Cube while this many body bytes wait for the caller; resume below half.
HIGH_WATER = 256 * 1024


class Response:
    """Cube's answer: status and headers at once, the body as it arrives.

    Every answer must be released, and ``async with response:`` does it: a connection whose
    answer was read to the end goes back to its pool, any other is closed, so a half-read
    answer never leaks into the next call. Body bytes waiting for the caller are bounded
    by ``HIGH_WATER`` (reading from Cube pauses above it).
    """

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

    def __init__(self, conn: Connection, read_timeout: float) -> None:
        self.status = 0
        #: the framing headers, names lower-cased; a repeated one keeps its last value.
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

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def error(self) -> UpstreamError | None:
        """Why the answer broke off, once it has."""
        return self._error

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def read_chunk(self) -> bytes:
        """The next piece of the body, ``b""`` once it is all read."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self.wait()
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

    async def wait(self) -> None:
        """Until the connection has news for this answer (head, body, end or failure), at most ``read_timeout``."""
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    # -- called by the connection -------------------------------------------------------------

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout(f"Cube sent nothing for {self._read_timeout:g} s"))

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if not self._paused and self._buffered > HIGH_WATER:
            self._paused = True
            self._conn.pause_reading()
        self.wake()

    def finish(self, keep_alive: bool) -> None:
        self._complete = True
        self.keep_alive = keep_alive
        self.wake()

    def fail(self, error: UpstreamError) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        self.wake()

    @property
    def complete(self) -> bool:
        return self._complete
