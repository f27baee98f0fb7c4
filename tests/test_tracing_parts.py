"""The parts of tracing without a server: its settings (and OpenTelemetry's standard variables), the bounded span
export, and the trust rule for a caller's ``traceparent``."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from proxy.observe.span_export import BoundedExport
from proxy.observe.tracing import SpanCounts
from proxy.pipeline.client_info import trusted_peer
from proxy.settings import SettingsError, settings_from_mapping
from proxy.settings.checks import otlp_headers
from proxy.settings.load import redacted

BASE = {
    "gitlab": {"url": "http://gitlab.test"},
    "product_analytics": {"cube_api_base_url": "http://cube.test/cubejs-api/v1", "cube_api_key": "k" * 32},
}


def tracing(raw: dict | None = None, env: dict | None = None):
    return settings_from_mapping({**BASE, "tracing": raw or {}}, env or {}).tracing


def test_tracing_is_off_by_default_and_on_with_its_setting():
    assert not tracing().enabled
    on = tracing({"enabled": True})
    assert on.enabled and on.endpoint == "http://127.0.0.1:4318/v1/traces" and on.sample_ratio == 1.0


def test_opentelemetrys_standard_variables_set_what_they_name():
    settings = tracing(
        {"enabled": True},
        {
            "OTEL_SERVICE_NAME": "pa-proxy-eu",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc",
        },
    )
    assert settings.service_name == "pa-proxy-eu"
    assert settings.endpoint == "http://collector:4318/v1/traces"  # the general endpoint gets OTLP's traces path
    assert settings.sample_ratio == 0.25 and settings.headers == "x-api-key=abc"
    # the traces' own variables win over the general ones; PROXY_TRACING__* wins over both
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2",
    }
    assert tracing({}, env).endpoint == "http://traces:4318/custom" and tracing({}, env).headers == "b=2"
    ours = tracing({}, {**env, "PROXY_TRACING__ENDPOINT": "http://ours:4318/v1/traces"})
    assert ours.endpoint == "http://ours:4318/v1/traces"


def test_otel_sdk_disabled_turns_tracing_off_whatever_else_says():
    env = {"OTEL_SDK_DISABLED": "true", "PROXY_TRACING__ENABLED": "true"}
    assert not tracing({"enabled": True}, env).enabled
    assert tracing({"enabled": True}, {"OTEL_SDK_DISABLED": "false"}).enabled


def test_bad_tracing_settings_are_all_said_at_once_without_a_headers_value():
    with pytest.raises(SettingsError) as caught:
        tracing(
            {"endpoint": "collector:4318", "sample_ratio": 1.5, "queue_size": 0, "headers": "x-api-key: s3cret-value"}
        )
    said = str(caught.value)
    assert "[tracing] endpoint" in said and "[tracing] sample_ratio" in said and "[tracing] queue_size" in said
    assert "[tracing] headers: pair 1 is not name=value" in said
    assert "s3cret" not in said


def test_otlp_headers_follow_the_variables_form():
    assert otlp_headers("a=1, b = two%20words ,\nc=x%3Dy\n") == {"a": "1", "b": "two words", "c": "x=y"}
    with pytest.raises(ValueError, match="line break") as caught:
        otlp_headers("a=ok%0D%0Ainjected")
    assert "injected" not in str(caught.value)


def test_headers_from_a_secret_file_are_redacted_where_settings_are_shown(tmp_path):
    secret = tmp_path / "otlp-headers"
    secret.write_text("authorization=Bearer%20s3cret-token\n")
    settings = settings_from_mapping({**BASE, "tracing": {"enabled": True, "headers_file": str(secret)}}, {})
    assert otlp_headers(settings.tracing.headers or "") == {"authorization": "Bearer s3cret-token"}
    assert "s3cret" not in repr(redacted(settings))


def test_a_caller_is_trusted_with_its_trace_only_from_loopback_or_a_trusted_proxy():
    assert trusted_peer("127.0.0.1", ()) and trusted_peer("::1", ()) and trusted_peer("::ffff:127.0.0.1", ())
    assert not trusted_peer("203.0.113.9", ()) and not trusted_peer(None, ())
    proxies = (ipaddress.ip_network("10.0.0.0/16"),)  # as [server] trusted_proxies holds them
    assert trusted_peer("10.0.0.7", proxies) and not trusted_peer("10.1.0.7", proxies)


class Exporter(SpanExporter):
    """An exporter that records each batch, and can be made to hang (a collector that never answers)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.hang = threading.Event()
        self.released = threading.Event()
        self.shut = False

    def export(self, spans) -> SpanExportResult:
        if self.hang.is_set():
            self.released.wait(30)
            return SpanExportResult.FAILURE
        self.batches.append(len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True
        self.released.set()


def ended_span() -> ReadableSpan:
    from opentelemetry.sdk.trace import TracerProvider

    span = TracerProvider().get_tracer("test").start_span("work")
    span.end()
    return span  # type: ignore[return-value]


def test_the_queue_is_bounded_and_what_it_drops_is_counted():
    counts = SpanCounts()
    export = BoundedExport(Exporter(), queue_size=3, batch_size=100, delay=60.0, counts=counts)
    for _ in range(5):
        export.on_end(ended_span())
    assert counts.dropped == 2 and counts.sent == 0  # two past the bound, and nothing sent on the caller's thread
    export.start()
    assert export.force_flush(10_000)
    assert counts.sent == 3
    export.shutdown(1.0)


def test_batches_are_no_larger_than_batch_size():
    exporter = Exporter()
    export = BoundedExport(exporter, queue_size=100, batch_size=4, delay=60.0, counts=SpanCounts())
    export.start()
    for _ in range(10):
        export.on_end(ended_span())
    assert export.force_flush(10_000)
    assert sum(exporter.batches) == 10 and max(exporter.batches) <= 4
    export.shutdown(1.0)


def test_shutdown_returns_within_its_budget_whatever_the_collector_does():
    exporter = Exporter()
    counts = SpanCounts()
    export = BoundedExport(exporter, queue_size=100, batch_size=1, delay=60.0, counts=counts)
    export.start()
    exporter.hang.set()
    for _ in range(3):
        export.on_end(ended_span())
    started = time.monotonic()
    export.shutdown(0.3)
    # the budget, then the exporter's shutdown (which ends its wait) and a bounded join
    assert time.monotonic() - started < 0.3 + 0.5 + 1.0
    assert exporter.shut and counts.sent == 0 and counts.unsent == 3
