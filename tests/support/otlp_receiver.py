"""A real OTLP/HTTP traces receiver for the tests: it decodes what the proxy's exporter sends with OpenTelemetry's own
protobuf classes (``opentelemetry-proto``), as a collector does, and keeps every span it was sent."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

KINDS = {
    SpanProto.SPAN_KIND_SERVER: "server",
    SpanProto.SPAN_KIND_CLIENT: "client",
    SpanProto.SPAN_KIND_INTERNAL: "internal",
}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool
    links: list[tuple[str, str]]
    events: list[str]
    resource: dict[str, Any]
    start: int
    end: int


@dataclass
class Receiver:
    """What a collector was sent: each export's raw body and headers, and the spans decoded from them."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    #: the status answered to exports (a collector that refuses: 503)
    status: int = 200
    #: while set, every export waits for it (a collector that does not answer)
    hold: asyncio.Event | None = None
    #: where it listens (set by the test's fixture)
    url: str = ""
    _changed: asyncio.Condition | None = None

    async def _export(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.hold is not None:
            await self.hold.wait()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        self.bodies.append(raw)
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.Response(status=self.status)
        assert request.content_type == "application/x-protobuf", request.content_type
        message = ExportTraceServiceRequest()
        message.ParseFromString(raw)
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            error=span.status.code == Status.STATUS_CODE_ERROR,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            events=[event.name for event in span.events],
                            resource=resource,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                        )
                    )
        async with self._condition():
            self._condition().notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def until(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0) -> list[ReceivedSpan]:
        """The spans received, once ``done`` says they are all there (an AssertionError after ``timeout``)."""
        condition = self._condition()
        async with condition:
            try:
                await asyncio.wait_for(condition.wait_for(lambda: done(self.spans)), timeout)
            except TimeoutError:
                raise AssertionError(f"the collector did not get the spans expected; it has {self.names()}") from None
        return self.spans

    def names(self) -> list[str]:
        return [span.name for span in self.spans]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        return app


def tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> dict[str, Any]:
    """``root`` and the spans under it, as nested {name: [children...]} for a readable assertion."""
    children = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start)
    return {root.name: [tree(spans, child) for child in children]}


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r} among {[s.name for s in spans]}"
    return found[0]
