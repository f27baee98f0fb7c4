"""The answers the pipeline hands its front doors, by the names the doors use.

- ``Buffered``: a whole answer (status, body), written at once.
- ``Streamed`` and ``SharedStream``: a 200 whose body is relayed chunk by chunk as Cube sends
  it (a ``SharedStream`` is one caller's share of a coalesced call).
- ``QueryAnswer``: any of them, what ``answer_query`` returns.
"""

from __future__ import annotations

from proxy.caching.coalesce import QueryAnswer, SharedStream
from proxy.caching.kept import kept_answer, plain_body
from proxy.cube.client import Buffered, Streamed

__all__ = ["Buffered", "ContinueWaitAnswer", "QueryAnswer", "SharedStream", "Streamed", "kept_answer", "plain_body"]


class ContinueWaitAnswer(Exception):
    """A meta answer that must reach the caller but never the cache."""

    def __init__(self, answer: Buffered) -> None:
        super().__init__("continue wait")
        self.answer = answer
