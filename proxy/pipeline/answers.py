"""The answers the pipeline hands its front doors, by the names the doors use.

- ``Buffered``: a whole answer (status, body), written at once.
- ``Streamed`` and ``SharedStream``: a 200 whose body is relayed chunk by chunk as Cube sends
  it (a ``SharedStream`` is one caller's share of a coalesced call).
- ``QueryAnswer``: any of them, what ``answer_query`` returns.
"""

from __future__ import annotations

from proxy.cube.client import Buffered, Streamed
from proxy.pipeline.coalesce import QueryAnswer, SharedStream
from proxy.pipeline.encoding import GZIP, encode_kept, gunzip_body

__all__ = ["Buffered", "ContinueWaitAnswer", "QueryAnswer", "SharedStream", "Streamed", "kept_answer", "plain_body"]


def kept_answer(status: int, body: bytes) -> Buffered:
    """An answer as a cache keeps it: compressed once when long enough, with the hash of its content."""
    encoded, coding, tag = encode_kept(body)
    return Buffered(status, encoded, None, coding=coding, tag=tag)


def plain_body(answer: Buffered) -> bytes:
    """A kept answer's content, uncompressed (what the fleet's shared layer holds)."""
    return gunzip_body(answer.body) if answer.coding == GZIP else answer.body


class ContinueWaitAnswer(Exception):
    """A meta answer that must reach the caller but never the cache."""

    def __init__(self, answer: Buffered) -> None:
        super().__init__("continue wait")
        self.answer = answer
