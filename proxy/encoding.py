"""Answers on the wire: content negotiation, gzip, and strong validators. Pure functions, one rule for both doors.

- **Negotiation** (RFC 9110, 12.5.3): ``Accept-Encoding`` with q-values; gzip (or ``x-gzip``,
  or ``*``) with q > 0, and at least identity's q where identity is named (or ``*`` stands for
  it), is gzip; anything else identity (an answer is never refused for its coding: no 406).
  Only gzip: zlib is in the standard library, every HTTP client decodes it, and at the
  levels chosen it costs 1 to 2 ns a byte; brotli would save about a fifth more on JSON for
  a dependency and more CPU at equal speed.
- **What is compressed**: an answer of at least ``MIN_COMPRESS`` bytes (smaller ones gain
  less than a packet); a whole answer up to ``MAX_WHOLE_COMPRESS`` at ``WHOLE_LEVEL``, one
  kept in a cache once at ``KEPT_LEVEL`` (compressed once, served many times), a stream
  chunk by chunk at ``STREAM_LEVEL`` as it arrives (memory flat in its size: zlib's
  window). Numbers are in ``bench/NOTES.md``.
- **Validators**: a kept answer's strong ``ETag`` is a hash of its content, one per coding
  as RFC 9110 (8.8.3) asks of a strong validator (``"<hash>"`` plain, ``"<hash>-gzip"``
  compressed); ``If-None-Match`` matches either form of the same content.
"""

from __future__ import annotations

import hashlib
import zlib

GZIP = "gzip"
IDENTITY = "identity"
#: answers shorter than this go plain: gzip saves under a packet there (500 bytes of an answer: 164 gzipped)
MIN_COMPRESS = 1024
#: zlib level for a whole answer compressed for one caller (256 KiB of an answer: 0.5 ms, 17 times smaller)
WHOLE_LEVEL = 1
#: zlib level for an answer compressed once and kept (256 KiB: 1.3 ms, 24 times smaller)
KEPT_LEVEL = 6
#: zlib level for a stream, chunk by chunk on the event loop (a 64 KiB chunk: about 0.1 ms)
STREAM_LEVEL = 1
#: the longest whole answer compressed (or inflated) on the event loop: 512 KiB at KEPT_LEVEL is about 2.7 ms;
#: longer whole answers (a large meta, a large zero-fill) go plain. Streams are compressed chunk by chunk.
MAX_WHOLE_COMPRESS = 512 * 1024
#: the codings of one Accept-Encoding header looked at, at most
MAX_CODINGS = 32
#: zlib's window bits for the gzip wrapping
_GZIP_BITS = 31
#: headers on every answer whose coding depends on the request
VARY = {"Vary": "Accept-Encoding"}


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` lets the answer be gzip, and prefers it to identity (or says nothing of it)."""
    if not accept_encoding:
        return False
    gzip_q: float | None = None
    identity_q: float | None = None
    any_q: float | None = None
    for item in accept_encoding.split(",", MAX_CODINGS)[:MAX_CODINGS]:
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        q = _quality(params)
        if q is None:
            continue  # a malformed q-value: that coding is not named
        if coding in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == IDENTITY:
            identity_q = q
        elif coding == "*":
            any_q = q
    if gzip_q is None:
        gzip_q = any_q if any_q is not None else 0.0
    if identity_q is None:
        identity_q = any_q  # unnamed, identity is acceptable but not preferred (as nginx and Apache read it)
    return gzip_q > 0 and (identity_q is None or gzip_q >= identity_q)


def _quality(params: str) -> float | None:
    """The ``q`` parameter's value (1 when absent), or None when it is not a valid qvalue."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            try:
                q = float(value)
            except ValueError:
                return None
            return q if 0 <= q <= 1 and len(value) <= 5 else None
    return 1.0


def gzip_body(body: bytes, level: int = WHOLE_LEVEL) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_BITS)
    return compressor.compress(body) + compressor.flush()


def gunzip_body(body: bytes) -> bytes:
    """A gzip body of ours, plain again (kept answers: their size is bounded where they were kept)."""
    return zlib.decompress(body, _GZIP_BITS)


class GzipStream:
    """A stream compressed as it goes: ``feed`` each chunk and get it compressed whole (flushed to a byte
    boundary, so a caller reads each chunk as soon as Cube sent it, not when zlib's buffer fills), then
    ``finish``. Its memory is zlib's, whatever the stream's length."""

    __slots__ = ("_compressor",)

    def __init__(self, level: int = STREAM_LEVEL) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_BITS)

    def feed(self, chunk: bytes) -> bytes:
        return self._compressor.compress(chunk) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush()


def content_tag(body: bytes) -> str:
    """The hash an answer's validators are made of (its content, whatever its coding)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def etag(tag: str, coding: str) -> str:
    """The strong ``ETag`` of a content in one coding."""
    return f'"{tag}-gzip"' if coding == GZIP else f'"{tag}"'


def none_match(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names this content (in either coding, weakly compared, or ``*``)."""
    if not if_none_match:
        return False
    for item in if_none_match.split(",", MAX_CODINGS)[:MAX_CODINGS]:
        item = item.strip()
        if item == "*":
            return True
        item = item.removeprefix("W/")
        if item in (f'"{tag}"', f'"{tag}-gzip"'):
            return True
    return False


def encode_kept(body: bytes) -> tuple[bytes, str, str]:
    """An answer to keep, in the form it is kept: its body (gzipped at ``KEPT_LEVEL`` when long enough, so a cache
    holds it compressed and a compressing caller costs no compression), that body's coding, and its content's hash."""
    tag = content_tag(body)
    if not MIN_COMPRESS <= len(body) <= MAX_WHOLE_COMPRESS:
        return body, IDENTITY, tag
    return gzip_body(body, KEPT_LEVEL), GZIP, tag


def represent(
    gzip: bool, if_none_match: str | None, status: int, body: bytes, coding: str = IDENTITY, tag: str | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """A whole answer as it goes to one caller: its status (304 when the caller has this content), body and the
    headers that say its form (``Vary``, ``Content-Encoding``, ``ETag``). A kept gzip body is sent as is to a
    caller taking gzip and inflated for another; a plain one is compressed for a gzip caller when long enough."""
    headers = dict(VARY)
    if tag is not None and status == 200 and none_match(if_none_match, tag):
        headers["ETag"] = etag(tag, GZIP if gzip and coding == GZIP else IDENTITY)
        return 304, b"", headers
    if coding == GZIP and not gzip:
        body, coding = gunzip_body(body), IDENTITY
    elif coding == IDENTITY and gzip and MIN_COMPRESS <= len(body) <= MAX_WHOLE_COMPRESS:
        body, coding = gzip_body(body), GZIP
    if coding == GZIP:
        headers["Content-Encoding"] = GZIP
    if tag is not None and status == 200:
        headers["ETag"] = etag(tag, coding)
    return status, body, headers
