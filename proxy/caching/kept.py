"""An answer as the caches keep it: compressed once when long enough, with its content's hash (its validator)."""

from __future__ import annotations

from proxy.cube.client import Buffered
from proxy.encoding import GZIP, encode_kept, gunzip_body


def kept_answer(status: int, body: bytes) -> Buffered:
    """An answer as a cache keeps it: compressed once when long enough, with the hash of its content."""
    encoded, coding, tag = encode_kept(body)
    return Buffered(status, encoded, None, coding=coding, tag=tag)


def plain_body(answer: Buffered) -> bytes:
    """A kept answer's content, uncompressed (what the fleet's shared layer holds)."""
    return gunzip_body(answer.body) if answer.coding == GZIP else answer.body
