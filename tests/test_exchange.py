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
