"""Write flow control for one lane connection (as uvicorn keeps its ``FlowControl`` apart from the protocol)."""

from __future__ import annotations

import asyncio

from proxy.errors import CallerStalled


class FlowControl:
    """Writes wait while the transport's buffer is over its high-water mark.

    asyncio calls ``pause_writing`` when the buffer passes the mark and ``resume_writing``
    when it drains below the low one; ``drain`` returns at once unless writing is paused,
    and otherwise when it resumes or the connection is lost. So what the lane holds for a
    slow reader is bounded by the transport's high-water mark plus one chunk, and for how
    long by ``write_timeout``: a caller that reads nothing that long gets ``CallerStalled``.
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

    async def drain(self, write_timeout: float) -> None:
        """Until writing may go on; ``CallerStalled`` if the caller reads nothing for ``write_timeout`` s."""
        while self.paused and not self._transport.is_closing():
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(write_timeout, _stalled, waiter, write_timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    def wake(self) -> None:
        """Let a waiting writer go on (writing resumed, or the connection was lost)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _stalled(waiter: asyncio.Future[None], write_timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(CallerStalled(f"the caller read nothing for {write_timeout:g} s"))
