"""OpenTelemetry traces of the requests (``[tracing]``, docs/tracing.md): spans made here, sent over OTLP/HTTP.

Rules it keeps:
- off (the default), nothing here is made and the SDK is not imported: the pipeline holds
  ``None`` for the tracer and each step pays one ``is not None``;
- spans are made with explicit parents (``Traced.child``), never through a process-wide
  "current span": this process's tracer provider is its own, not OpenTelemetry's global one;
- a caller's ``traceparent`` is continued only when the pipeline says the caller is trusted
  (``Tracing.request``'s ``parent``); anyone else's starts a new trace;
- names follow OpenTelemetry's HTTP conventions (a route template or a fixed name, never a
  raw path); attributes are the ones listed here and never hold a token, cookie, CSRF token,
  query body or key;
- sampling is parent-based (a continued trace keeps its caller's decision, a new one is
  recorded at ``sample_ratio``) and decided before any span is made: a request that is not
  recorded gets no span at all, so it costs what tracing off costs (the SDK's own unsampled
  spans cost about a third of a pass-through request: bench/NOTES.md).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from proxy.errors import ApiError
from proxy.settings.checks import otlp_headers
from proxy.settings.model import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

    from proxy.observe.span_export import BoundedExport

#: an attribute's value as OpenTelemetry takes it
Attribute = str | bool | int | float

#: OpenTelemetry's span kinds, by the names used here (``SpanKind`` itself is imported only with tracing on)
SERVER, CLIENT, INTERNAL = "server", "client", "internal"

#: what this module names the instrumentation scope
SCOPE = "product-analytics-proxy"


class SpanCounts:
    """What became of this process's sampled spans: sent, dropped at a full queue, or not sent by a failed export.

    ``dropped`` is written on the event loop's thread, ``sent`` and ``unsent`` on the export
    thread: each has one writer.
    """

    __slots__ = ("dropped", "sent", "unsent")

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self.unsent = 0


class _Kit(NamedTuple):
    """The tracer and the API's parts a span needs, looked up once (the SDK is imported only with tracing on)."""

    tracer: Tracer
    kinds: Mapping[str, SpanKind]
    in_context: Callable[[Span], Any]
    link: type[Link]
    status: type[Status]
    error: StatusCode


class Traced:
    """One span being recorded, with the tracer its children come from: what a step is handed to trace under."""

    __slots__ = ("_kit", "span")

    def __init__(self, span: Span, kit: _Kit) -> None:
        self.span = span
        self._kit = kit

    def child(
        self,
        name: str,
        kind: str = INTERNAL,
        attributes: Mapping[str, Attribute] | None = None,
        links: Sequence[Link] = (),
    ) -> Traced:
        """A span under this one (started now); end it with ``end`` or by leaving it as a context manager."""
        kit = self._kit
        span = kit.tracer.start_span(name, kit.in_context(self.span), kit.kinds[kind], attributes, links or None)
        return Traced(span, kit)

    def set(self, key: str, value: Attribute) -> None:
        self.span.set_attribute(key, value)

    def event(self, name: str, attributes: Mapping[str, Attribute] | None = None) -> None:
        self.span.add_event(name, attributes)

    def link(self) -> Link:
        """A link to this span, for a span that waited on the work this one did (a joined Cube call)."""
        return self._kit.link(self.span.get_span_context())

    def add_link(self, other: Traced) -> None:
        """A link to ``other`` added to this span (it waited on the work ``other`` did: a joined Cube call)."""
        self.span.add_link(other.span.get_span_context())

    def fail(self, error_type: str, description: str | None = None) -> None:
        """This span's work failed: status ERROR, and ``error.type`` (a status code or an exception's class name)."""
        self.span.set_attribute("error.type", error_type)
        self.span.set_status(self._kit.status(self._kit.error, description))

    def end(self) -> None:
        self.span.end()

    @property
    def traceparent(self) -> str:
        """This span as a W3C ``traceparent`` header (what Cube and GitLab are sent): its flags only say whether it
        is sampled (trace context level 1, as every peer reads it)."""
        context = self.span.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 1:02x}"

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    def __enter__(self) -> Traced:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is not None:
            self.fail(*error_of(exc))
        self.end()


def error_of(exc: BaseException) -> tuple[str, str | None]:
    """A failure's ``error.type`` and description: an ``ApiError``'s status and message (never a secret: the
    caller is shown the same), else the exception's class name alone."""
    if isinstance(exc, ApiError):
        message = exc.body.get("message")
        return str(exc.status), message if isinstance(message, str) else None
    return type(exc).__qualname__, None


class Tracing:
    """This process's tracer (``[tracing] enabled``): a sampler, a tracer provider of its own, and ``BoundedExport``.

    Made in the process that serves (a worker, after the fork); ``open`` starts its export
    thread, ``close`` sends what is queued within a budget.
    """

    def __init__(self, settings: TracingSettings, counts: SpanCounts, version: str = "") -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from proxy.observe.span_export import BoundedExport

        self.settings = settings
        attributes: dict[str, Attribute] = {"service.name": settings.service_name, "process.pid": os.getpid()}
        if version:
            attributes["service.version"] = version
        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES (the deployment's own, e.g. k8s.pod.name)
        #: the share of new traces recorded, drawn here (``request``): the SDK records whatever it is handed
        self._ratio = settings.sample_ratio
        self._draw = random.Random().random  # noqa: S311 - a sampling draw, not a secret
        provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=Resource.create(attributes),
            shutdown_on_exit=False,  # ``close`` flushes within the drain's budget; atexit would wait longer
        )
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint,
            headers=otlp_headers(settings.headers) if settings.headers else None,
            timeout=settings.export_timeout,
        )
        self.export: BoundedExport = BoundedExport(
            exporter, settings.queue_size, settings.batch_size, settings.export_delay, counts
        )
        provider.add_span_processor(self.export)
        kinds = {SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT, INTERNAL: SpanKind.INTERNAL}
        self._kit = _Kit(
            provider.get_tracer(SCOPE, version or None), kinds, set_span_in_context, Link, Status, StatusCode.ERROR
        )
        self._propagator = TraceContextTextMapPropagator()

    def request(
        self,
        name: str,
        attributes: Mapping[str, Attribute],
        parent: str | None = None,
        state: str | None = None,
    ) -> Traced | None:
        """A request's server span, continuing ``parent`` (a trusted caller's valid ``traceparent``, and its
        ``tracestate``) when given, else starting a trace; None when the request is not recorded (its caller did
        not sample ``parent``, or a new trace fell past ``sample_ratio``)."""
        context = None
        if parent is not None:
            if not int(parent[53:55], 16) & 1:  # the caller's trace-flags: not sampled
                return None
            carrier = {"traceparent": parent} if state is None else {"traceparent": parent, "tracestate": state}
            context = self._propagator.extract(carrier)
        elif self._ratio < 1.0 and self._draw() >= self._ratio:
            return None
        kit = self._kit
        return Traced(kit.tracer.start_span(name, context, kit.kinds[SERVER], attributes), kit)

    def open(self) -> None:
        self.export.start()

    def flush(self, seconds: float) -> bool:
        """Everything ended so far sent (True) or ``seconds`` passed (False); blocks: call it off the loop."""
        return self.export.force_flush(int(seconds * 1000))

    async def close(self, budget: float) -> None:
        """The queue sent within ``budget`` seconds (on a thread: the loop goes on), then the export stopped."""
        await asyncio.to_thread(self.export.shutdown, budget)
