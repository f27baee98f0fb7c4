"""A request's server span: started in ``Pipeline.begin`` and ended in ``Pipeline.finish``, the same for both doors.

Rules it keeps (OpenTelemetry's HTTP conventions): the span is named by the method and the
route's template, never a raw path; a method outside the standard ones is ``_OTHER``; the
caller's ``traceparent`` (and ``tracestate``) is continued only from a trusted peer
(``proxy.pipeline.client_info.trusted_peer``); the status is an error only for a 5xx the
proxy answered (a 4xx is the caller's, a 499 the caller leaving).
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.observe.tracing import Attribute, Traced, Tracing
from proxy.pipeline.client_info import Network, trusted_peer
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.routes import CLIENT_CLOSED_REQUEST, STANDARD_METHODS, TRACESTATE


def server_span(
    tracing: Tracing, exchange: Exchange, headers: Mapping[str, str], peer: str | None, trusted: tuple[Network, ...]
) -> Traced | None:
    """The request's server span, under the caller's trace when a trusted peer named one; None when the request
    is not recorded (``Tracing.request``)."""
    method = exchange.method if exchange.method in STANDARD_METHODS else "_OTHER"
    route = exchange.route
    attributes: dict[str, Attribute] = {
        "http.request.method": method,
        "url.scheme": "http",
        "proxy.request_id": exchange.request_id,
    }
    if route is not None:
        attributes["http.route"] = route
    if exchange.client is not None:
        attributes["client.address"] = exchange.client
    if exchange.user_agent is not None:
        attributes["user_agent.original"] = exchange.user_agent
    parent = exchange.traceparent
    if parent is not None and not trusted_peer(peer, trusted):
        parent = None
    state = headers.get(TRACESTATE) if parent is not None else None
    return tracing.request(f"{method} {route}" if route else method, attributes, parent, state)


def end_server_span(trace: Traced, exchange: Exchange, status: int) -> None:
    """The server span's outcome (its status, the project, the answer cache's verdict), and its end."""
    trace.set("http.response.status_code", status)
    if exchange.project is not None:
        trace.set("gitlab.project.id", exchange.project)
    if exchange.cache is not None:
        trace.set("proxy.cache", exchange.cache.name)
    if status >= 500 and status != CLIENT_CLOSED_REQUEST:
        trace.fail(str(status))
    trace.end()
