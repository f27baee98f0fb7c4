"""Reading a peer's whole body without letting the peer choose how much memory that takes."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def read_at_most(content_length: int | None, chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``limit`` bytes (nothing more is read).

    A declared length over the limit is refused before any of the body is read.
    """
    if content_length is not None and content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
