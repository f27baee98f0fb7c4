"""Calls to Cube's ``/cubejs-api/v1`` and the classification of what comes back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .answers import error_text, is_continue_wait, map_cube_error
from .errors import ApiError

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
#: an error body larger than this is not an error body Cube writes.
MAX_ERROR_BODY = 1024 * 1024
#: enough bytes of a body to tell ``{"error": ...}`` from data.
_PREFIX_BYTES = 16


@dataclass
class Buffered:
    """A whole answer for the caller: status and JSON body bytes."""

    status: int
    body: bytes
    #: the body parsed, when it was (data a caller-side step may still transform).
    parsed: Any = None
    continue_wait: bool = False


@dataclass
class Streamed:
    """A 200 answer from Cube whose body is still arriving."""

    response: aiohttp.ClientResponse
    prefix: bytes
    release: Callable[[], None] = field(default=lambda: None)

    @property
    def content_length(self) -> int | None:
        return self.response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole body: the prefix already read, then the rest as it arrives."""
        if self.prefix:
            yield self.prefix
        async for chunk in self.response.content.iter_chunked(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self.response.release()
        self.release()


Answer = Buffered | Streamed


def upstream_fault(status: int, message: str) -> ApiError:
    return ApiError(status, {"message": message})


def buffered_json(status: int, body: dict[str, Any]) -> Buffered:
    return Buffered(status, orjson.dumps(body), body)


def classify_body(raw: bytes) -> Buffered:
    """Map a whole body Cube sent to the caller's answer (spec section 5)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise upstream_fault(502, "Cube answered with a body that is not valid JSON") from None
    message = error_text(parsed)
    if message is None:
        return Buffered(200, raw, parsed)
    if is_continue_wait(parsed):
        return Buffered(200, raw, parsed, continue_wait=True)
    status, body = map_cube_error(message)
    return buffered_json(status, body)


class CubeClient:
    """One shared ``ClientSession`` towards every Cube; no caller header ever reaches it."""

    def __init__(
        self, session: aiohttp.ClientSession, connect_timeout: float, read_timeout: float, buffer_limit: int
    ) -> None:
        self._session = session
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._buffer_limit = buffer_limit

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
    ) -> Answer:
        """Send one call; a fault raises ApiError (502/504) and leaves nothing open."""
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        # identity: bodies are passed through as bytes, so they must arrive unencoded.
        headers = {"Authorization": jwt, "X-Request-Id": request_id, "Accept-Encoding": "identity"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout, sock_read=read_timeout)
        try:
            # sock_connect bounds the connection; sock_read the wait for headers and each later read
            response = await self._session.request(
                method, url, data=payload, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise upstream_fault(504, f"Cube did not answer within {read_timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise upstream_fault(502, f"Cube is unreachable: {exc.strerror or type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_fault(502, f"Cube connection failed: {_describe(exc)}") from None
        try:
            return await self._classify(response, need_whole)
        except BaseException:
            response.release()
            raise

    async def _classify(self, response: aiohttp.ClientResponse, need_whole: bool) -> Answer:
        length = response.content_length
        try:
            if response.status != 200:
                raw = await _read_bounded(response, MAX_ERROR_BODY)
                return _classify_error_status(response.status, raw)
            if need_whole or (length is not None and length <= self._buffer_limit):
                return classify_body(await response.read())
            prefix = await _read_prefix(response)
            if response.content.at_eof():
                return classify_body(prefix)  # the whole body arrived with the prefix
            if _looks_like_error(prefix):
                rest = await _read_bounded(response, MAX_ERROR_BODY)
                return classify_body(prefix + rest)
            if not prefix.lstrip().startswith((b"{", b"[")):
                raise upstream_fault(502, "Cube answered with a body that is not valid JSON")
            return Streamed(response, prefix)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise upstream_fault(504, "Cube stopped sending its answer (read timeout)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_fault(502, f"Cube connection failed: {_describe(exc)}") from None
        finally:
            if response.content.at_eof():
                response.release()


def _classify_error_status(status: int, raw: bytes) -> Buffered:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    message = error_text(parsed)
    if message is None:
        raise upstream_fault(502, f"Cube answered {status} without an error message")
    code, body = map_cube_error(message)
    return buffered_json(code, body)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
        size += len(chunk)
        if size > limit:
            raise upstream_fault(502, f"Cube's error answer is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _read_prefix(response: aiohttp.ClientResponse) -> bytes:
    prefix = b""
    while len(prefix.lstrip()) < _PREFIX_BYTES:
        chunk = await response.content.read(CHUNK_SIZE)
        if not chunk:
            break
        prefix += chunk
    return prefix


def _looks_like_error(prefix: bytes) -> bool:
    head = prefix.lstrip()
    return head.startswith(b"{") and head[1:].lstrip().startswith(b'"error"')


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, (ConnectionResetError, aiohttp.ClientOSError)):
        return "connection reset"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "incomplete answer"
    return type(exc).__name__
