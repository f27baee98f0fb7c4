"""The signed envelope every shared value travels in: a format version, an absolute expiry, an HMAC.

``v1.<expiry in ms since the epoch>.<hex HMAC-SHA256>.<payload>``, where the HMAC covers
the version, the Redis key, the expiry and the payload. Opening one refuses, and says why:
another format version, a signature that does not fit (someone wrote it, changed it, or
moved it from another key), or an expiry passed by more than ``SKEW_SECONDS`` (a value
put back after Redis let it go): whatever TTL Redis itself gives the key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

VERSION = b"v1"
#: how far the fleet's clocks may disagree: a value is refused this long after its expiry
SKEW_SECONDS = 2.0


class Envelope:
    """Seals and opens values for one signing key."""

    def __init__(self, signing_key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = signing_key
        self._clock = clock

    def _digest(self, rkey: str, expires_ms: bytes, payload: bytes) -> bytes:
        message = b"\0".join((VERSION, rkey.encode(), expires_ms, payload))
        return hmac.new(self._key, message, hashlib.sha256).hexdigest().encode()

    def seal(self, rkey: str, payload: bytes, ttl: float) -> bytes:
        """``payload`` for ``rkey``, good for ``ttl`` seconds from now."""
        expires_ms = b"%d" % int((self._clock() + ttl) * 1000)
        return b".".join((VERSION, expires_ms, self._digest(rkey, expires_ms, payload), payload))

    def open(self, rkey: str, stored: bytes) -> tuple[bytes | None, str]:
        """The payload sealed for ``rkey`` and still good, or None and why not (version, signature, expired)."""
        parts = stored.split(b".", 3)
        if len(parts) != 4 or parts[0] != VERSION:
            return None, "version"
        _, expires_ms, digest, payload = parts
        if not expires_ms.isdigit() or len(expires_ms) > 16:
            return None, "signature"
        if not hmac.compare_digest(digest, self._digest(rkey, expires_ms, payload)):
            return None, "signature"
        if int(expires_ms) / 1000 + SKEW_SECONDS < self._clock():
            return None, "expired"
        return payload, ""
