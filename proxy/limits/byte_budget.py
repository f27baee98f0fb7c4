"""A budget of bytes held at once (answers read whole from Cube, from their first byte until they are done).

``take(n)`` before the bytes are read, ``give(n)`` when they are let go; a ``take`` past the
budget is refused at once (503 with ``Retry-After``), before a byte is read, so what is
held never exceeds the budget however many callers ask.
"""

from __future__ import annotations

from proxy.errors import unavailable


class ByteBudget:
    def __init__(self, total: int, refusal: str) -> None:
        self.total = total
        #: bytes held now
        self.held = 0
        self._refusal = refusal

    def take(self, size: int) -> None:
        if self.held + size > self.total:
            raise unavailable(self._refusal)
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
