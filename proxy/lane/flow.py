"""Write flow control for one lane connection (as uvicorn keeps its ``FlowControl`` apart from the protocol)."""

from __future__ import annotations

import asyncio


class FlowControl:
    """Writes wait while the transport's buffer is over its high-water mark.

    asyncio calls ``pause_writing`` when the buffer passes the mark and ``resume_writing``
    when it drains below the low one; ``drain`` returns at once unless writing is paused,
    and otherwise when it resumes or the connection is lost. So what the lane holds for a
    slow reader is bounded by the transport's high-water mark plus one chunk.
    """

    __slots__ = ("_loop", "_transport", "_waiter", "paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._loop = loop
        self._transport = transport
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()

    async def drain(self) -> None:
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
