import gzip
import time
import zlib

import orjson
import pytest

from proxy.errors import ApiError
from proxy.pipeline.request_body import MAX_MEMBERS, inflate, json_depth_ok, parse_body, query_request
from tests.support.stranger_load import gzip_bomb


def test_only_query_and_query_type_reach_cube():
    q = query_request({"query": {"measures": ["A.count"]}, "extra": 1, "include_token": False}, {})
    assert orjson.loads(q.payload) == {"query": {"measures": ["A.count"]}, "queryType": "multi"}
    assert q.include_token is False


def test_fingerprint_ignores_key_order():
    a = query_request({"query": {"measures": ["A.count"], "limit": 5}}, {})
    b = query_request({"query": {"limit": 5, "measures": ["A.count"]}}, {})
    c = query_request({"query": {"limit": 5, "measures": ["A.count"]}, "queryType": "regular"}, {})
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_an_order_objects_key_order_reaches_cube_and_tells_calls_apart():
    """Cube sorts by an ``order`` object's keys in their order: that order is the caller's, never sorted away."""
    by_path = {"A.path": "asc", "A.count": "desc"}
    by_count = {"A.count": "desc", "A.path": "asc"}
    a = query_request({"query": {"measures": ["A.count"], "order": by_path, "limit": 3}}, {})
    b = query_request({"query": {"limit": 3, "order": by_count, "measures": ["A.count"]}}, {})
    assert list(orjson.loads(a.payload)["query"]["order"]) == ["A.path", "A.count"]
    assert list(orjson.loads(b.payload)["query"]["order"]) == ["A.count", "A.path"]
    assert a.fingerprint != b.fingerprint
    # the other keys' order still means nothing; Cube's array form of the same order is the same call
    c = query_request({"query": {"order": by_path, "limit": 3, "measures": ["A.count"]}}, {})
    pairs = [["A.path", "asc"], ["A.count", "desc"]]
    d = query_request({"query": {"measures": ["A.count"], "order": pairs, "limit": 3}}, {})
    assert a.fingerprint == c.fingerprint == d.fingerprint


def test_include_token_from_body_or_query_string():
    assert query_request({"query": {}, "include_token": True}, {}).include_token
    assert query_request({"query": {}}, {"include_token": "true"}).include_token
    assert not query_request({"query": {}, "include_token": False}, {"include_token": "true"}).include_token


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({}, 400, "query is missing"),
        ({"query": None}, 400, "query is missing"),
        ({"query": [1]}, 400, "query must be a JSON object"),
        ({"query": "x"}, 400, "query must be a JSON object"),
        ({"query": {}, "queryType": 5}, 400, "queryType must be a string"),
        ({"query": {"limit": 50_001}}, 400, "at most 50000"),
        ({"query": {"limit": -1}}, 400, "whole number"),
        ({"query": {"limit": "10"}}, 400, "whole number"),
        ({"query": {}, "include_token": "maybe"}, 400, "include_token must be true or false"),
    ],
)
def test_bad_bodies(body, status, fragment):
    with pytest.raises(ApiError) as info:
        query_request(body, {})
    assert info.value.status == status
    assert fragment in str(info.value.body)


def test_missing_query_body_is_the_specs():
    with pytest.raises(ApiError) as info:
        query_request({}, {})
    assert info.value.body["error"] == "query is missing"


def test_parse_body():
    assert parse_body(b"", 5) == {}
    assert parse_body(b' {"query": {}} ', 5) == {"query": {}}
    with pytest.raises(ApiError, match="not valid JSON"):
        parse_body(b"{nope", 5)
    with pytest.raises(ApiError, match="must be a JSON object"):
        parse_body(b"[1, 2]", 5)
    with pytest.raises(ApiError, match="nested deeper than 3"):
        parse_body(b'{"a": {"b": {"c": {}}}}', 3)


def test_depth():
    assert json_depth_ok(b'{"a": [1, {"b": 2}]}', 3)
    assert not json_depth_ok(b'{"a": [1, {"b": [3]}]}', 3)
    assert json_depth_ok(b'{"a": [{}, [], {"b": "]]]}}}\\"[[["}]}', 3)  # brackets in strings nest nothing
    assert not json_depth_ok(b'{"a": [{"b": [{}]}]}', 4)
    assert json_depth_ok(b'{"a": [{"b": [{}]}]}', 5)
    assert json_depth_ok(b'{"x":[]}', 2) and not json_depth_ok(b'{"x":[]}', 1)
    assert not json_depth_ok(b"[" * 10_000 + b"]" * 10_000, 64)


def test_a_wide_body_is_checked_in_time_linear_in_it_not_walked_value_by_value():
    """A body of 40 empty arrays and 330,000 numbers: its check used to walk every value in Python (58 ms
    for 660 KB, many times the parse); now it costs about what orjson's own parse does."""
    raw = b'{"query":{"measures":["a"]},"x":[' + b"[]," * 40 + b"1," * 330_000 + b"1]}"
    started = time.perf_counter()
    orjson.loads(raw)
    parse = time.perf_counter() - started
    started = time.perf_counter()
    parse_body(raw, 32)
    checked = time.perf_counter() - started
    assert checked < parse * 5, (checked, parse)


def test_many_brackets_side_by_side_or_in_strings_are_not_depth():
    assert parse_body(b'{"a": [1], "b": [2], "c": [3], "d": "[[[[{{{{"}', 2)["d"] == "[[[[{{{{"
    with pytest.raises(ApiError, match="nested deeper than 2"):
        parse_body(b'{"a": [[1]]}', 2)


def test_a_body_is_inflated_as_its_encoding_says_within_the_limit():
    body = b'{"query": {"measures": ["A.count"]}}'
    assert inflate(gzip.compress(body), "gzip", 1024) == body
    assert inflate(gzip.compress(body), " X-Gzip ", 1024) == body
    assert inflate(zlib.compress(body), "deflate", 1024) == body
    bare = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert inflate(bare.compress(body) + bare.flush(), "deflate", 1024) == body  # as some clients send deflate
    assert inflate(gzip.compress(body[:10]) + gzip.compress(body[10:]), "gzip", 1024) == body  # two members
    assert inflate(body, "identity", 1024) == inflate(body, "", 1024) == body
    assert inflate(gzip.compress(b"x" * 1024), "gzip", 1024) == b"x" * 1024  # the limit itself is allowed


def test_a_gzip_bomb_is_413_after_inflating_no_more_than_the_limit():
    bomb = gzip_bomb(1000)  # 1 MiB that inflates to 1000 MiB
    started = time.process_time()
    with pytest.raises(ApiError) as refused:
        inflate(bomb, "gzip", 1024 * 1024)
    assert refused.value.status == 413 and "1048576 bytes" in refused.value.body["message"]
    assert time.process_time() - started < 0.05  # what 1 MiB costs, not 1000 MiB (about half a second)


@pytest.mark.parametrize(
    ("raw", "coding", "fragment"),
    [
        (b"plain text", "gzip", "could not be decoded as its Content-Encoding ('gzip')"),
        (gzip.compress(b"{}", mtime=0)[:-6], "gzip", "ends inside its gzip stream"),
        (b"{}", "br", "Content-Encoding 'br' is not supported: send gzip, deflate or none"),
        (b"{}", "gzip, deflate", "is not supported"),
        (gzip.compress(b"") * (MAX_MEMBERS + 1), "gzip", f"more than {MAX_MEMBERS} gzip members"),
    ],
)
def test_a_body_that_does_not_decode_is_a_400_saying_what_to_send(raw, coding, fragment):
    with pytest.raises(ApiError) as refused:
        inflate(raw, coding, 1024)
    assert refused.value.status == 400 and fragment in refused.value.body["message"]
