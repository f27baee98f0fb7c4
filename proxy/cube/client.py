"""Calls to Cube's ``/cubejs-api/v1`` and the classification of what comes back."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.bounded import read_at_most
from proxy.cube.error_map import DATABASE_RETRY_AFTER, error_text, error_type, is_continue_wait, map_cube_error
from proxy.errors import ApiError, unavailable
from proxy.http_client import (
    ConnectFailed,
    ConnectTimeout,
    HttpClient,
    PoolBusy,
    ReadTimeout,
    Response,
    UpstreamError,
)
from proxy.limits.byte_budget import ByteBudget

log = logging.getLogger(__name__)

#: an error body larger than this is not an error body Cube writes.
MAX_ERROR_BODY = 1024 * 1024
#: a body read whole is parsed on the event loop only up to this size; a larger one (data: Cube's
#: errors are small) is handed on as bytes, for whoever needs its data to parse it off the loop
PARSE_ON_LOOP_BYTES = 256 * 1024
#: enough bytes of a body to tell ``{"error": ...}`` from data.
_PREFIX_BYTES = 16
_ERROR_FIRST = re.compile(rb'\s*\{\s*"error"')
_OUTLINES = {(b"{", b"}"), (b"[", b"]")}


@dataclass
class Buffered:
    """A whole answer for the caller: status and JSON body bytes."""

    status: int
    body: bytes
    #: the body parsed, when it was (data a caller-side step may still transform).
    parsed: Any = None
    continue_wait: bool = False
    #: bytes of the client's whole-answers budget this answer holds (read whole); its user gives them back
    held: int = 0
    #: the body's content-coding ("identity", or "gzip" for an answer kept compressed), and the hash its validators
    #: are made of (kept answers only: ``proxy/encoding.py``)
    coding: str = "identity"
    tag: str | None = None


@dataclass
class Streamed:
    """A 200 answer from Cube whose body is still arriving."""

    response: Response
    prefix: bytes
    release: Callable[[], None] = field(default=lambda: None)

    @property
    def content_length(self) -> int | None:
        return self.response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole body: the prefix already read, then the rest as it arrives."""
        if self.prefix:
            yield self.prefix
        try:
            async for chunk in self.response.iter_chunks():
                yield chunk
        except UpstreamError as exc:
            raise body_fault(exc) from None

    def close(self) -> None:
        self.response.release()
        self.release()


CubeAnswer = Buffered | Streamed


def upstream_fault(status: int, message: str) -> ApiError:
    return ApiError(status, {"message": message})


def body_fault(exc: UpstreamError) -> ApiError:
    """What a caller gets when Cube's answer broke off after its headers."""
    if isinstance(exc, ReadTimeout):
        return upstream_fault(504, "Cube stopped sending its answer (read timeout)")
    return upstream_fault(502, _connection_failed(exc))


def cube_error(message: str, kind: str | None = None) -> Buffered:
    """A Cube ``error`` as the caller's answer; Cube's database down is a 503 with ``Retry-After`` (an ApiError,
    since the answer carries a header), its details (internal addresses) only in the log."""
    status, body = map_cube_error(message, kind)
    if status == 503:
        log.warning("Cube cannot reach its database: %s", message, extra={"event": "cube_database_down"})
        raise unavailable(body["message"], DATABASE_RETRY_AFTER, body)
    return Buffered(status, orjson.dumps(body), body)


def classify_body(raw: bytes, parse: bool = True) -> Buffered:
    """Map a whole body Cube sent to the caller's answer (spec section 5).

    With ``parse=False`` (no step of the proxy reads the data), a 200 body that is not an
    error is checked only for its outline, ``{...}`` or ``[...]``, as a streamed body is,
    not parsed into objects only to be freed. Cube writes its errors with ``error`` first,
    so they are still seen.
    """
    if not parse and not _looks_like_error(raw) and _json_outline(raw):
        return Buffered(200, raw)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise upstream_fault(502, "Cube answered with a body that is not valid JSON") from None
    message = error_text(parsed)
    if message is None:
        return Buffered(200, raw, parsed)
    if is_continue_wait(parsed):
        return Buffered(200, raw, parsed, continue_wait=True)
    return cube_error(message, error_type(parsed))


class CubeClient:
    """Calls to every Cube over one lean keep-alive client; no caller header ever reaches it."""

    def __init__(
        self,
        http: HttpClient,
        read_timeout: float,
        buffer_limit: int,
        max_whole: int = 64 * 1024 * 1024,
        whole_budget: ByteBudget | None = None,
    ) -> None:
        self._http = http
        self.read_timeout = read_timeout
        self._buffer_limit = buffer_limit
        #: a body read whole although large (meta, the zero-fill) may not exceed this
        self._max_whole = max_whole
        #: bytes of such bodies held at once, taken before the first byte is read (its Content-Length, or
        #: max_whole when Cube sends none) and held until the answer's user gives them back (``Buffered.held``)
        self.whole_budget = whole_budget if whole_budget is not None else ByteBudget(1 << 62, "")

    async def call(
        self,
        url: str,
        method: str,
        jwt: str,
        request_id: str,
        payload: bytes | None,
        *,
        read_timeout: float | None = None,
        need_whole: bool = False,
        parse: bool = True,
        traceparent: str | None = None,
    ) -> CubeAnswer:
        """Send one call; a fault raises ApiError (502/504) and leaves nothing open."""
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        # identity: bodies are passed through as bytes, so they must arrive unencoded.
        headers = {"Authorization": jwt, "X-Request-Id": request_id, "Accept-Encoding": "identity"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if traceparent is not None:
            headers["traceparent"] = traceparent  # W3C trace context: the caller's trace crosses the proxy
        try:
            # read_timeout bounds the wait for headers and for each later piece of the body
            response = await self._http.request(method, url, headers, payload, read_timeout)
        except ReadTimeout:
            raise upstream_fault(504, f"Cube did not answer within {read_timeout:g} s") from None
        except PoolBusy as exc:
            # Cube is healthy but saturated by other calls: the caller may try again, as at the tenant cap
            raise unavailable(f"{exc}; try again shortly") from None
        except UpstreamError as exc:
            raise upstream_fault(502, _connection_failed(exc)) from None
        try:
            return await self._classify(response, need_whole, parse)
        except BaseException:
            response.release()
            raise

    async def _read_whole(self, response: Response) -> bytes:
        """A large body read whole (meta, the zero-fill): within the whole-answers budget, bounded in size, and
        in time as a whole; its bytes stay taken from the budget (the caller gives them back).

        ``read_timeout`` bounds each gap; a peer trickling a byte at a time could still hold
        the call for ever, so the whole body must also arrive within one full ``read_timeout``.
        """
        length = response.content_length
        reserved = self._max_whole if length is None else min(length, self._max_whole + 1)
        self.whole_budget.take(reserved)  # 503 past the budget, before a byte is read
        try:
            async with asyncio.timeout(self.read_timeout):
                raw = await _read_bounded(response, self._max_whole, "Cube's answer")
        except TimeoutError:
            self.whole_budget.give(reserved)
            raise upstream_fault(504, f"Cube did not send its whole answer within {self.read_timeout:g} s") from None
        except BaseException:
            self.whole_budget.give(reserved)
            raise
        self.whole_budget.give(reserved - len(raw))
        return raw

    async def _classify(self, response: Response, need_whole: bool, parse: bool) -> CubeAnswer:
        length = response.content_length
        try:
            if response.status != 200:
                raw = await _read_bounded(response, MAX_ERROR_BODY, "Cube's error answer")
                return _classify_error_status(response.status, raw)
            if length is not None and length <= self._buffer_limit:
                return classify_body(await response.read(), parse)
            if need_whole:
                raw = await self._read_whole(response)
                try:
                    answer = classify_body(raw, parse and len(raw) <= PARSE_ON_LOOP_BYTES)
                except BaseException:
                    self.whole_budget.give(len(raw))
                    raise
                answer.held = len(raw)
                return answer
            prefix = await _read_prefix(response)
            if response.at_eof():
                return classify_body(prefix, parse)  # the whole body arrived with the prefix
            if _looks_like_error(prefix):
                rest = await _read_bounded(response, MAX_ERROR_BODY, "Cube's error answer")
                return classify_body(prefix + rest)
            if not prefix.lstrip().startswith((b"{", b"[")):
                raise upstream_fault(502, "Cube answered with a body that is not valid JSON")
            return Streamed(response, prefix)
        except UpstreamError as exc:
            raise body_fault(exc) from None
        finally:
            if response.at_eof():
                response.release()


def _connection_failed(exc: UpstreamError) -> str:
    if isinstance(exc, (ConnectFailed, ConnectTimeout)):
        return str(exc)
    return f"Cube connection failed: {exc}"


def _classify_error_status(status: int, raw: bytes) -> Buffered:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    message = error_text(parsed)
    if message is None:
        raise upstream_fault(502, f"Cube answered {status} without an error message")
    if status == 403:
        # Cube refused the token this proxy signed: its key is not Cube's CUBEJS_API_SECRET (a configuration
        # fault, not the caller's); the caller still gets Cube's message as a 400 (spec section 5)
        log.error(
            "Cube refused the proxy's signed token (%s): check cube_api_key against Cube's CUBEJS_API_SECRET",
            message,
            extra={"event": "cube_key_refused"},
        )
    return cube_error(message, error_type(parsed))


async def _read_bounded(response: Response, limit: int, what: str) -> bytes:
    """The whole body, or a 502 as soon as it is known to exceed ``limit`` bytes (nothing more is read)."""
    raw = await read_at_most(response.content_length, response.iter_chunks(), limit)
    if raw is None:
        raise upstream_fault(502, f"{what} is larger than {limit} bytes")
    return raw


async def _read_prefix(response: Response) -> bytes:
    """The body's first pieces, until ``_PREFIX_BYTES`` of it are not whitespace (or it ends).

    Linear in what it reads (the pieces are joined once), and bounded: Cube writes no
    leading whitespace, so more than ``MAX_ERROR_BODY`` bytes of it is a 502.
    """
    parts: list[bytes] = []
    size = meaningful = 0
    while meaningful < _PREFIX_BYTES:
        chunk = await response.read_chunk()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        meaningful += len(chunk.lstrip()) if meaningful == 0 else len(chunk)
        if meaningful == 0 and size > MAX_ERROR_BODY:
            raise upstream_fault(502, f"Cube's answer began with more than {MAX_ERROR_BODY} bytes of whitespace")
    return b"".join(parts)


def _looks_like_error(prefix: bytes) -> bool:
    return _ERROR_FIRST.match(prefix) is not None


def _json_outline(raw: bytes) -> bool:
    """``{...}`` or ``[...]``, around any whitespace: not HTML, not cut short."""
    first, last = raw[:1], raw[-1:]
    if first.isspace():  # rare: copy only then
        first = raw.lstrip()[:1]
    if last.isspace():
        last = raw.rstrip()[-1:]
    return (first, last) in _OUTLINES
