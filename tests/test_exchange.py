"""The per-request record (proxy/pipeline/exchange.py) and the pipeline's first step."""

from proxy.auth.credentials import Credential
from proxy.pipeline.core import Pipeline
from proxy.settings import settings_from_mapping


def test_begin_makes_a_record_whose_repr_never_shows_the_credential() -> None:
    pipeline = Pipeline(settings_from_mapping({}, {}))
    exchange = pipeline.begin(
        "POST", "/projects/{project}/product_analytics/request/load", {"X-Request-Id": "trace-7"}, "10.1.2.3"
    )
    assert (exchange.request_id, exchange.method, exchange.project, exchange.cache) == (
        "trace-7-span-1",
        "POST",
        None,
        None,
    )
    exchange.credential = Credential("private", "glpat-secret-token-000001")
    exchange.project = 3
    assert "glpat" not in repr(exchange) and "project=3" in repr(exchange)
    assert exchange.client == "10.1.2.3"
    assert pipeline.begin("GET", None, {"X-Request-Id": "bad id!"}, None).request_id.endswith("-span-1")  # made fresh


def test_only_the_answer_caches_verdicts_are_sent_as_x_cache() -> None:
    """One field holds the verdict; its header is the answer cache's alone (a meta or coalesced one says nothing)."""
    from proxy.caching import verdict
    from proxy.caching.cached_queries import answer_headers

    pipeline = Pipeline(settings_from_mapping({}, {}))
    exchange = pipeline.begin("POST", "/projects/{project}/product_analytics/request/load", {}, None)
    assert answer_headers(exchange) is None
    for said in (verdict.META_HIT, verdict.META_MISS, verdict.SHARED, verdict.ALONE):
        exchange.cache = said
        assert answer_headers(exchange) is None
    exchange.cache = verdict.BYPASS
    assert answer_headers(exchange) == {"X-Cache": "BYPASS"}
    exchange.cache, exchange.age = verdict.STALE, 7
    assert answer_headers(exchange) == {"X-Cache": "STALE", "Age": "7"}
    assert {v.name for v in (verdict.HIT, verdict.META_HIT)} == {"hit"}  # the access line's word is the same
