"""Bytes of request bodies being received at once: a budget per process and one per client address.

A body is counted from when the pipeline starts to read it until it is parsed (its size
as declared by ``Content-Length``, or the largest body allowed when it is chunked), so
callers that send large bodies slowly hold at most the budget between them, and one
client address at most its share; past either, the request is answered 503 with
``Retry-After`` before a byte of its body is read. The per-address table holds one entry
per address with a body in flight (bounded by the requests in flight).
"""

from __future__ import annotations

from proxy.errors import ApiError, unavailable

RETRY_AFTER = "1"


def bodies_busy() -> ApiError:
    return unavailable("Too many request bodies are arriving at once; retry shortly", RETRY_AFTER)


class BodyBudget:
    """``take(client, size)`` before a body's read, ``give(client, size)`` once it is parsed; ``take`` is a 503
    when it would go past either budget (plain calls, not a context manager: this is on every request)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        #: bytes held now, in all and by client address
        self.held = 0
        self._by_client: dict[str | None, int] = {}

    def take(self, client: str | None, size: int) -> None:
        mine = self._by_client.get(client, 0)
        if self.held + size > self.total or mine + size > self.per_client:
            raise bodies_busy()
        self.held += size
        self._by_client[client] = mine + size

    def give(self, client: str | None, size: int) -> None:
        self.held -= size
        left = self._by_client[client] - size
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]
