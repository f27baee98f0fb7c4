"""Answers on the wire: negotiated gzip, streams gzipped as they arrive, kept answers compressed once, 304s.

Raw bytes are read with ``auto_decompress=False`` (aiohttp's client asks for gzip and inflates by
default). Both doors; meta's tests are aiohttp's (GET: the lane hands it over).
"""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest
from aiohttp import web

from proxy.encoding import MIN_COMPRESS, accepts_gzip, etag, none_match
from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER
from tests.fakes.cube import answer, chunked, load_answer
from tests.support.wire import HEAD, TAIL

LOAD = "/api/v4/projects/1/product_analytics/request/load"
META = "/api/v4/projects/1/product_analytics/request/meta"
GZIP = {"Accept-Encoding": "gzip, deflate, br"}
PLAIN = {"Accept-Encoding": "identity"}


def panel_rows(days: int = 30, pages: int = 12) -> list[dict[str, str]]:
    """A typical dashboard panel: a count per day and page (14 KB of JSON, as measured on the stack)."""
    return [
        {
            "TrackedEvents.derivedTstamp.day": f"2026-11-{1 + day:02d}T00:00:00.000",
            "TrackedEvents.derivedTstamp": f"2026-11-{1 + day:02d}T00:00:00.000",
            "TrackedEvents.pageUrlpath": f"/docs/page-{page}",
            "TrackedEvents.count": str((day * 7 + page * 13) % 97),
        }
        for day in range(days)
        for page in range(pages)
        if (day + page) % 3
    ]


def panel(rows: list[dict[str, str]] | None = None):
    async def behaviour(call, request):
        return web.json_response(load_answer(call.body["query"], panel_rows() if rows is None else rows))

    return behaviour


async def post(client, headers, query=QUERY):
    resp = await client.post(LOAD, json={"query": query}, headers={**REPORTER, **headers}, auto_decompress=False)
    return resp, await resp.read()


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("br;q=1, *;q=0.1", True),
        ("gzip;q=0", False),
        ("gzip;q=0.5, identity;q=1", False),
        ("gzip;q=1, identity;q=0.5", True),
        ("identity", False),
        ("identity;q=0, *;q=0", False),
        ("br, zstd", False),
        ("gzip;q=2", False),
        ("gzip;q=nope", False),
        ("", False),
        (None, False),
    ],
)
def test_negotiation_follows_rfc_9110(header, gzip):
    assert accepts_gzip(header) is gzip


def test_if_none_match_names_either_form_of_the_content():
    assert none_match('"abc"', "abc") and none_match('W/"abc-gzip"', "abc") and none_match("*", "abc")
    assert none_match('"x", "abc"', "abc") and not none_match('"abcd"', "abc") and not none_match(None, "abc")
    assert etag("abc", "gzip") == '"abc-gzip"' and etag("abc", "identity") == '"abc"'


async def test_a_panel_is_a_fifteenth_of_the_bytes_for_a_caller_that_takes_gzip(make_client, settings, cube):
    cube.behaviour = panel()
    client = await make_client(settings)
    plain, plain_body = await post(client, PLAIN)
    packed, packed_body = await post(client, GZIP)
    assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
    assert packed.headers["Content-Encoding"] == "gzip" and packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed_body) == plain_body
    assert int(packed.headers["Content-Length"]) == len(packed_body)
    assert len(plain_body) > 14_000 and len(packed_body) * 15 <= len(plain_body), (len(plain_body), len(packed_body))


@pytest.mark.parametrize("header", ["identity", "gzip;q=0", "br, zstd", "*;q=0, identity", None])
async def test_a_caller_that_does_not_take_gzip_gets_it_plain(make_client, settings, cube, header):
    cube.behaviour = panel()
    client = await make_client(settings)
    headers = {} if header is None else {"Accept-Encoding": header}
    if header is None:  # no Accept-Encoding at all: aiohttp's client would add its own
        headers = {"Accept-Encoding": ""}
    resp, body = await post(client, headers)
    assert "Content-Encoding" not in resp.headers and resp.headers["Vary"] == "Accept-Encoding"
    assert orjson.loads(body)["results"][0]["data"] == panel_rows()


async def test_small_answers_errors_and_continue_wait_follow_the_same_rule(make_client, make_settings, cube):
    client = await make_client(make_settings(cube={"continue_wait_budget": 0.0}))  # Continue wait answered at once
    cube.behaviour = panel([{"TrackedEvents.count": "1"}])  # under MIN_COMPRESS: plain
    resp, body = await post(client, GZIP)
    assert len(body) < MIN_COMPRESS and "Content-Encoding" not in resp.headers and resp.headers["Vary"]
    long_error = "Cube not found for path " + "x" * 2000
    cube.behaviour = answer(400, {"error": long_error})  # a long error: compressed like an answer
    resp, body = await post(client, GZIP)
    assert resp.status == 400 and resp.headers["Content-Encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(body))["message"] == long_error
    short = await client.post(LOAD, json={}, headers={**REPORTER, **GZIP}, auto_decompress=False)
    assert short.status == 400 and "Content-Encoding" not in short.headers  # query is missing: plain
    cube.behaviour = answer(200, {"error": "Continue wait"})
    resp, body = await post(client, GZIP)
    assert "Content-Encoding" not in resp.headers and orjson.loads(body) == {"error": "Continue wait"}


@pytest.fixture
def stream_settings(make_settings):
    return make_settings(cube={"buffer_limit": 64, "continue_wait_budget": 0.0})


async def test_a_stream_is_gzipped_as_it_arrives(make_client, stream_settings, cube):
    """Each chunk goes out as soon as Cube sent it (flushed), compressed; the framing is chunked, memory zlib's."""
    rest_may_come = asyncio.Event()
    middle = b'{"TrackedEvents.count":"2"},' * 2000
    cube.behaviour = chunked([HEAD + middle, TAIL], between=rest_may_come)
    client = await make_client(stream_settings)
    resp = await client.post(LOAD, json={"query": QUERY}, headers={**REPORTER, **GZIP}, auto_decompress=False)
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in resp.headers
    inflate = __import__("zlib").decompressobj(31)
    seen = b""
    while len(seen) < len(HEAD + middle):  # the first chunk, whole, before Cube sends the rest
        seen += inflate.decompress(await resp.content.readany())
    assert seen == HEAD + middle and not rest_may_come.is_set()
    rest_may_come.set()
    seen += inflate.decompress(await resp.read()) + inflate.flush()
    assert seen == HEAD + middle + TAIL and inflate.eof


async def test_a_gzipped_stream_cut_off_midway_never_looks_whole(make_client, stream_settings, cube):
    cube.behaviour = chunked([HEAD + b" " * 100, b'{"a":"' + b"x" * 5000, TAIL], die_after=2)
    client = await make_client(stream_settings)
    resp = await client.post(LOAD, json={"query": QUERY}, headers={**REPORTER, **GZIP}, auto_decompress=False)
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    with pytest.raises(Exception):  # noqa: B017, PT011 - the connection is cut: aiohttp says so in one of two ways
        await resp.read()


@pytest.fixture
def cached(make_settings):
    return make_settings(product_analytics={"answer_ttl": 60.0})


async def test_a_kept_answer_is_compressed_once_and_a_hit_costs_no_compression(make_client, cached, cube):
    cube.behaviour = panel()
    client = await make_client(cached)
    _, miss_body = await post(client, GZIP)
    cache = client.app[PIPELINE].services.cached_queries.cache
    [entry] = list(cache._entries.values())  # what the cache holds
    assert entry.answer.coding == "gzip" and cache.bytes < len(gzip.decompress(miss_body)) / 10
    hit, hit_body = await post(client, GZIP)
    assert hit.headers["X-Cache"] == "HIT" and hit_body == entry.answer.body  # the kept bytes themselves
    plain, plain_body = await post(client, PLAIN)
    assert plain.headers["X-Cache"] == "HIT" and plain_body == gzip.decompress(hit_body)
    assert "Content-Encoding" not in plain.headers
    assert miss_body == hit_body  # the caller that missed got the kept form too
    assert len(cube.calls_to("load")) == 1


async def test_the_cache_holds_five_times_more_panels_in_the_same_budget(make_settings, make_client, cube):
    cube.behaviour = panel()
    settings = make_settings(product_analytics={"answer_ttl": 60.0}, cube={"answer_cache_bytes": 256 * 1024})
    client = await make_client(settings)
    for n in range(120):
        await post(client, PLAIN, {**QUERY, "limit": n + 1})
    cache = client.app[PIPELINE].services.cached_queries.cache
    plain_size = len(orjson.dumps(load_answer({}, panel_rows()))) + 512
    assert len(cache) >= 5 * (256 * 1024 // plain_size), (len(cache), 256 * 1024 // plain_size)


async def test_if_none_match_gets_a_304_without_a_body(make_client, cached, cube):
    cube.behaviour = panel()
    client = await make_client(cached)
    first, _ = await post(client, GZIP)
    tag = first.headers["ETag"]
    assert tag.endswith('-gzip"')
    plain, _ = await post(client, PLAIN)
    assert plain.headers["ETag"] == tag.replace("-gzip", "")  # one validator per coding of the same content
    again, body = await post(client, {**GZIP, "If-None-Match": tag})
    assert (again.status, body, again.headers["ETag"], again.headers["X-Cache"]) == (304, b"", tag, "HIT")
    assert "Content-Length" not in again.headers or again.headers["Content-Length"] == "0"
    other, body = await post(client, {**GZIP, "If-None-Match": '"something-else"'})
    assert other.status == 200 and body
    assert len(cube.calls_to("load")) == 1


@pytest.mark.handed_over  # meta is aiohttp's (GET)
async def test_meta_is_kept_compressed_and_answers_304(make_client, settings, cube):
    client = await make_client(settings)
    first = await client.get(META, headers={**REPORTER, **GZIP}, auto_decompress=False)
    body = await first.read()
    assert first.status == 200 and first.headers["Vary"] == "Accept-Encoding" and first.headers["ETag"]
    meta = client.app[PIPELINE].services.meta_cache
    assert meta is not None
    plain = await client.get(META, headers={**REPORTER, **PLAIN}, auto_decompress=False)
    plain_body = await plain.read()
    if first.headers.get("Content-Encoding") == "gzip":
        assert gzip.decompress(body) == plain_body
    else:
        assert body == plain_body
    again = await client.get(META, headers={**REPORTER, **GZIP, "If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    assert len(cube.calls_to("meta")) == 1
