"""How an answer leaves the proxy: one rule each, for both front doors.

- **Draining closes connections**: from SIGTERM on, every answer says ``Connection: close``,
  so callers move to another worker or replica (``closes_connections``; the lane writes the
  header, aiohttp's door sets it on every response as it is prepared).
- **The write deadline**: a caller that reads nothing of a streamed answer for
  ``[server] write_timeout`` seconds is cut off (``relay``; each door only says how a chunk
  is written and how to wait until it may write more).
- **The answer's form** (``proxy/encoding.py``): a whole answer through
  ``encoding.represent``; a stream gzipped chunk by chunk as it arrives for a caller that
  takes gzip (``stream_headers`` say so, and the door frames it without a length).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from proxy.encoding import GZIP, VARY, GzipStream
from proxy.errors import CallerStalled
from proxy.pipeline.exchange import Exchange

#: writes one chunk; returns what to await before the next (the caller's side is full), or None to go on
Send = Callable[[bytes], Awaitable[None] | None]


class Stream(Protocol):
    """A streamed answer: its chunks as they arrive."""

    def chunks(self) -> AsyncIterator[bytes]: ...


async def relay(
    stream: Stream,
    exchange: Exchange,
    send: Send,
    write_timeout: float,
    failed: Callable[[Exchange, Exception], None],
) -> bool:
    """Write ``stream`` through ``send`` (gzipped as it goes when the caller takes gzip), each wait for the caller
    bounded by ``write_timeout``.

    False when it broke after its 200 went out (Cube's body, a stalled caller, a fault):
    ``failed`` has reported it, and the door must cut the connection off so the answer
    does not look whole (a gzip stream cut off does not end either). A caller that hung up
    (``ConnectionResetError``) propagates.
    """
    compressor = GzipStream() if exchange.gzip else None

    async def write(chunk: bytes) -> None:
        waiting = send(chunk)
        exchange.bytes_sent += len(chunk)
        if waiting is not None:
            try:
                async with asyncio.timeout(write_timeout):
                    await waiting
            except TimeoutError:
                raise CallerStalled(f"the caller read nothing for {write_timeout:g} s") from None

    try:
        async for chunk in stream.chunks():
            if compressor is not None and chunk:
                chunk = compressor.feed(chunk)  # what zlib has ready: maybe nothing yet
            if chunk:
                await write(chunk)
        if compressor is not None:
            await write(compressor.finish())
    except (ConnectionResetError, ConnectionAbortedError):
        raise  # the caller left
    except Exception as exc:
        failed(exchange, exc)
        return False
    return True


def stream_headers(exchange: Exchange) -> dict[str, str]:
    """A streamed answer's headers of form: ``Vary``, and ``Content-Encoding`` when ``relay`` gzips it (its
    length is then unknown: the door frames it in chunks)."""
    return {**VARY, "Content-Encoding": GZIP} if exchange.gzip else dict(VARY)
