"""The caller's request body: read within limits, checked, reduced to what Cube receives."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import orjson

from proxy.errors import ApiError, bad_request
from proxy.settings import CUBE_MAX_LIMIT


class QueryRequest(NamedTuple):
    query: dict[str, Any]
    query_type: str
    include_token: bool
    #: what Cube receives: exactly ``{"query": ..., "queryType": ...}``, its meaning the caller's (see ``canonical``)
    payload: bytes
    #: the query in canonical form: calls that mean the same to Cube have the same fingerprint
    fingerprint: bytes

    @property
    def renews(self) -> bool:
        """Whether the call asks Cube to renew its own cache: ``renewQuery`` set to anything but ``false`` (Cube
        renews on ``true`` and ``"true"`` and refuses ``null``, ``1``, ``"yes"``...: none may be answered from the
        plain query's cache entry)."""
        return "renewQuery" in self.query and self.query["renewQuery"] is not False

    @property
    def plain_fingerprint(self) -> bytes:
        """The fingerprint of the same query without ``renewQuery`` (the answer cache's entry a renewal drops)."""
        if "renewQuery" not in self.query:
            return self.fingerprint
        return canonical({k: v for k, v in self.query.items() if k != "renewQuery"}, self.query_type)


def canonical(query: Mapping[str, Any], query_type: str) -> bytes:
    """``{"query": ..., "queryType": ...}`` in canonical form: object keys sorted, list order kept, and the one
    object whose key order Cube reads, ``order``, as its list of ``[member, direction]`` pairs in the caller's order
    (Cube's own array form of it: the same meaning, so the two forms share a key)."""
    order = query.get("order")
    if isinstance(order, dict):
        query = {**query, "order": [[member, direction] for member, direction in order.items()]}
    return orjson.dumps({"query": query, "queryType": query_type}, option=orjson.OPT_SORT_KEYS)


def payload_and_fingerprint(query: Mapping[str, Any], query_type: str) -> tuple[bytes, bytes]:
    """What Cube receives and the canonical key, serialised once where they can be the same bytes.

    Cube reads an ``order`` object in its key order (``{"a": "asc", "b": "desc"}`` sorts by ``a`` first), so a
    query with one goes to Cube in the caller's key order, and its key is ``canonical``; any other query means
    the same whatever its key order, so its canonical form is what Cube receives too."""
    if isinstance(query.get("order"), dict):
        return orjson.dumps({"query": query, "queryType": query_type}), canonical(query, query_type)
    same = orjson.dumps({"query": query, "queryType": query_type}, option=orjson.OPT_SORT_KEYS)
    return same, same


class BodySource(Protocol):
    """A request's body as a front door has it: its declared size, and reading it (once) within the limits."""

    #: ``Content-Length``, or None when the body is chunked
    length: int | None

    async def read(self) -> bytes: ...


class WholeBody:
    """A body that arrived whole with its head (the fast lane serves only such requests)."""

    __slots__ = ("_raw", "length")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self.length: int | None = len(raw)

    async def read(self) -> bytes:
        return self._raw


def too_large(limit: int) -> ApiError:
    return bad_request(f"the request body is larger than the limit of {limit} bytes", status=413)


#: the request body codings the proxy decodes, and zlib's window bits for each (deflate: the zlib wrapping HTTP
#: names, or a bare stream as some clients send it)
_CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
#: gzip members one body may hold (each asks for a decompressor of its own)
MAX_MEMBERS = 16


def inflate(raw: bytes, coding: str, limit: int) -> bytes:
    """``raw`` decoded as its ``Content-Encoding`` says, into at most ``limit`` bytes.

    Work is bounded by ``limit``, never by the ratio a body declares: inflating stops one byte past the limit (a
    413), so a gigabyte bomb costs what ``limit`` bytes cost. A coding it does not know, or bytes that do not
    decode, are a 400 that says what to send."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return raw
    bits = _CODINGS.get(coding)
    if bits is None:
        shown = coding[:32]
        raise bad_request(f"the request body's Content-Encoding {shown!r} is not supported: send gzip, deflate or none")
    if coding == "deflate" and raw[:1] != b"\x78":
        bits = -15  # a bare deflate stream, without zlib's header
    out = bytearray()
    rest = raw
    for _ in range(MAX_MEMBERS):
        decoder = zlib.decompressobj(bits)
        try:
            out += decoder.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            raise bad_request(
                f"the request body could not be decoded as its Content-Encoding ({coding!r}) says"
            ) from None
        if len(out) > limit or decoder.unconsumed_tail:
            raise too_large(limit)
        if not decoder.eof:
            raise bad_request(f"the request body ends inside its {coding} stream") from None
        rest = decoder.unused_data
        if not rest:
            return bytes(out)
    raise bad_request(f"the request body holds more than {MAX_MEMBERS} {coding} members")


#: a JSON string, escapes and all (a string may hold brackets that nest nothing)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
#: an innermost pair: an empty array or object
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_depth_ok(raw: bytes, max_depth: int) -> bool:
    """Whether the JSON text ``raw`` (already known to parse) nests at most ``max_depth`` deep.

    Only C-level scans, linear in the body, however wide it is: strings are removed, then
    every byte but a bracket; each pass then removes the innermost pairs, so the passes
    needed to empty what is left are the depth (at most ``max_depth`` passes are made).
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = _INNERMOST.sub(b"", brackets)
    return not brackets


def _bool_param(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}:
        return value.lower() in {"true", "1"}
    raise bad_request(f"{where} must be true or false")


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object (an empty body is an empty object)."""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object with a 'query' object")
    # nesting cannot exceed the number of brackets: most bodies are cleared by two C-level counts
    if raw.count(b"{") + raw.count(b"[") > max_depth and not json_depth_ok(raw, max_depth):
        raise bad_request(f"the request body is nested deeper than {max_depth} levels")
    return body


def query_request(body: Mapping[str, Any], query_params: Mapping[str, str]) -> QueryRequest:
    """Check a load or dry-run body; every other key is dropped."""
    if "query" not in body or body["query"] is None:
        raise ApiError(400, {"error": "query is missing", "message": "query is missing"})
    query = body["query"]
    if not isinstance(query, dict):
        raise bad_request('query must be a JSON object (a Cube query such as {"measures": [...]})')
    query_type = body.get("queryType", "multi")
    if not isinstance(query_type, str) or not query_type:
        raise bad_request('queryType must be a string such as "multi"')
    limit = query.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise bad_request("query.limit must be a whole number of rows")
        if limit > CUBE_MAX_LIMIT:
            raise bad_request(f"query.limit must be at most {CUBE_MAX_LIMIT} rows (Cube's maximum), not {limit}")
    include_token = False
    if "include_token" in body:
        include_token = _bool_param(body["include_token"], "include_token")
    elif "include_token" in query_params:
        include_token = _bool_param(query_params["include_token"], "include_token")
    payload, fingerprint = payload_and_fingerprint(query, query_type)
    return QueryRequest(query, query_type, include_token, payload, fingerprint)
