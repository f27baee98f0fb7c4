"""Flow control for one lane connection (as uvicorn keeps its ``FlowControl`` apart from the protocol)."""

from __future__ import annotations

import asyncio


class FlowControl:
    """Writes wait while the transport's buffer is over its high-water mark; reading pauses while one is due.

    asyncio calls ``pause_writing`` when the buffer passes the mark and ``resume_writing``
    when it drains below the low one; ``drain`` returns when writing resumes or the
    connection is lost. So what the lane holds for a slow reader is bounded by the
    transport's high-water mark plus one chunk; for how long, by the write deadline the
    pipeline's ``relay`` puts around ``drain``. Reading is paused while a request is served
    and more than ``MAX_PIPELINED`` bytes of the next are buffered, and resumed after.
    """

    __slots__ = ("_loop", "_transport", "_waiter", "paused", "reading_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._loop = loop
        self._transport = transport
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.reading_paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()

    async def drain(self) -> None:
        """Until writing may go on, or the connection is lost."""
        while self.paused and not self._transport.is_closing():
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def wake(self) -> None:
        """Let a waiting writer go on (writing resumed, or the connection was lost)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self._transport.resume_reading()
