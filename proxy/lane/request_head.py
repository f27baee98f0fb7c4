"""What the fast lane serves: one request read from the front of a connection's buffer, or a reason not to.

A request is the lane's when it is

- ``POST`` to ``[/api/v4]/projects/<numeric id>/product_analytics/request/load`` or
  ``.../dry-run``, with no query string;
- HTTP/1.1 and keep-alive, framed by one ``Content-Length`` no larger than
  ``[limits] max_body_bytes``, and wholly read (head and body, nothing behind them);
- without ``Transfer-Encoding``, ``Expect``, ``Upgrade`` or ``Content-Encoding``, within
  the head limits of ``proxy/head_rules.py`` and repeating neither a header aiohttp
  refuses to see twice nor one the pipeline reads.

Anything else raises ``NotForLane``: the connection goes to aiohttp's server, which parses
the request from its first byte. The routes, the headers read and the route names come
from ``proxy/pipeline/routes.py``, as the web adapter's do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

from proxy.head_rules import MAX_FIELD, MAX_HEADERS, SINGLETONS
from proxy.pipeline.routes import ANALYTICS_ROOT, HEADERS_READ, PREFIXES, QUERY_ENDPOINTS, analytics_route


def _route_pattern() -> re.Pattern[bytes]:
    """``(prefix)?<root with the project as digits>/(endpoint)``, from the pipeline's route constants."""
    prefixes = "|".join(re.escape(p) for p in PREFIXES if p)
    root = re.escape(ANALYTICS_ROOT).replace(re.escape("{project}"), "([0-9]{1,20})")
    endpoints = "|".join(re.escape(e) for e in QUERY_ENDPOINTS)
    return re.compile(f"({prefixes})?{root}/({endpoints})".encode())


_ROUTE = _route_pattern()
#: (prefix, endpoint) as matched -> the route template the access line names, as aiohttp's router does
_ROUTE_NAMES = {
    (prefix.encode() or None, endpoint.encode()): analytics_route(prefix, endpoint)
    for prefix in PREFIXES
    for endpoint in QUERY_ENDPOINTS
}
#: the request headers the pipeline reads, by lower-cased name
_READ = {name.lower().encode(): name for name in HEADERS_READ}
#: a request with one of these is aiohttp's to serve
_ELSEWHERE = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding"})
#: the headers that may come once, a bit each
_SINGLETON_BITS = {name: 1 << bit for bit, name in enumerate(sorted(SINGLETONS))}
_HOST = _SINGLETON_BITS[b"host"]


def _rule(key: bytes) -> tuple[bool, int, str | None]:
    """What a header (lower-cased name) means to the lane: aiohttp's to serve, its singleton bit, the name read."""
    return key in _ELSEWHERE, _SINGLETON_BITS.get(key, 0), _READ.get(key)


#: the rules of every header the lane knows, by the name's common spellings (lower, Title-Case, UPPER): one
#: lookup per header instead of lower-casing it and three; other spellings are lower-cased first
_RULES = {
    spelling: _rule(key)
    for key in {*_ELSEWHERE, *_SINGLETON_BITS, *_READ}
    for spelling in (key, key.upper(), b"-".join(part.capitalize() for part in key.split(b"-")))
}
_CONTENT_LENGTH = _SINGLETON_BITS[b"content-length"]

#: the lane reads at most this many header fields (fewer than aiohttp's limit: odd requests are aiohttp's)
MAX_FIELDS = min(64, MAX_HEADERS)
#: what aiohttp strips around a header's value
_OWS = " \t"
#: a head longer than this, with no end in sight, is handed to aiohttp to answer
MAX_HEAD = 16 * 1024


class NotForLane(Exception):
    """This request is for aiohttp's server; ``head_incomplete`` when its head had not all arrived."""

    def __init__(self, head_incomplete: bool = False) -> None:
        super().__init__()
        self.head_incomplete = head_incomplete


@dataclass(slots=True)
class LaneRequest:
    """A request the lane serves: its route's name, endpoint and project, the headers read, and its body."""

    route: str
    endpoint: str
    project: str
    headers: dict[str, str]
    body: bytes
    #: how many bytes of the buffer it took (head and body)
    size: int


def _bare_lf(buffer: bytes, end: int) -> bool:
    """A line in ``buffer[:end]`` ends in LF without CR (aiohttp refuses it; llhttp may not)."""
    return buffer.count(b"\n", 0, end) != buffer.count(b"\r\n", 0, end)


class RequestReader:
    """httptools' parser and the state of the one request it is reading; one per connection, reused."""

    __slots__ = (
        "_begun",
        "_body_bytes",
        "_complete",
        "_fields",
        "_headers",
        "_length",
        "_max_body",
        "_parser",
        "_seen",
        "_url",
    )  # fmt: skip

    def __init__(self, max_body: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max_body = max_body
        self._url = b""
        self._headers: dict[str, str] = {}
        self._length: int | None = None
        #: body bytes the parser gave (checked against Content-Length)
        self._body_bytes = 0
        self._begun = self._complete = False
        #: the header fields counted, and the singletons seen (a bit each)
        self._fields = self._seen = 0

    def read(self, buffer: bytes) -> LaneRequest | None:
        """The request at the front of ``buffer``; None while its head is still arriving; else ``NotForLane``."""
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buffer) >= MAX_HEAD:
                raise NotForLane(head_incomplete=True)
            if _bare_lf(buffer, len(buffer)):
                raise NotForLane
            return None  # the head is still arriving; the keep-alive timer bounds the wait
        head = end + 4
        self._url, self._headers, self._length, self._body_bytes = b"", {}, None, 0
        self._begun = self._complete = False
        self._fields = self._seen = 0
        if _bare_lf(buffer, end):
            raise NotForLane
        try:
            # the whole buffer at once: a body longer than the limit stops at its head; bytes behind the
            # request (a second message) stop it too, and aiohttp parses what arrived together as a whole
            self._parser.feed_data(buffer)
        except httptools.HttpParserError:
            raise NotForLane from None
        length = self._length
        if not self._complete or length is None or self._body_bytes != length or len(buffer) != head + length:
            raise NotForLane  # a body still arriving, or framed otherwise than by its Content-Length
        route = _ROUTE.fullmatch(self._url)
        if route is None:
            raise NotForLane
        prefix, project, endpoint = route.groups()
        name = _ROUTE_NAMES[(prefix, endpoint)]
        return LaneRequest(name, endpoint.decode(), project.decode(), self._headers, buffer[head:], head + length)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._begun:
            raise NotForLane  # a second message in what should be one: the framing is not what it seemed
        self._begun = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD:
            raise NotForLane

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if len(name) + len(value) > MAX_FIELD or self._fields > MAX_FIELDS:
            raise NotForLane
        rule = _RULES.get(name)
        if rule is None:
            rule = _rule(name.lower())
        elsewhere, bit, canonical = rule
        if elsewhere:
            raise NotForLane
        if bit:
            if self._seen & bit:
                raise NotForLane  # repeated: aiohttp refuses it
            self._seen |= bit
            if bit == _CONTENT_LENGTH:  # a singleton: a second one was refused above
                if not value.isdigit():
                    raise NotForLane
                self._length = int(value)
                return
        if canonical is not None:
            if canonical in self._headers:
                raise NotForLane  # repeated: aiohttp's rules decide which counts
            self._headers[canonical] = value.decode("latin-1").strip(_OWS)

    def on_headers_complete(self) -> None:
        parser = self._parser
        # asked here: once the message is complete, llhttp has reset what these read
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            raise NotForLane
        if not self._seen & _HOST:
            raise NotForLane  # no Host: aiohttp's to answer
        if self._length is None or self._length > self._max_body:
            raise NotForLane  # no Content-Length, or a body over the limit: its bytes are not read here

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        self._complete = True
