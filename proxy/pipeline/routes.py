"""The routes and request headers the pipeline serves and reads: the one source both front doors build from."""

from __future__ import annotations

from proxy.auth.credentials import CREDENTIAL_HEADERS
from proxy.pipeline.request_id import REQUEST_ID_HEADER

USER_AGENT = "User-Agent"
FORWARDED_FOR = "X-Forwarded-For"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: what the access line says of the caller (its address through trusted proxies, its agent, its trace), and the
#: vendors' part of its trace context (continued with it, from a trusted caller)
CLIENT_HEADERS = (USER_AGENT, FORWARDED_FOR, TRACEPARENT, TRACESTATE)
ACCEPT_ENCODING = "Accept-Encoding"
IF_NONE_MATCH = "If-None-Match"
#: what the answer's form depends on (its coding; a 304 for a kept answer the caller has)
ANSWER_HEADERS = (ACCEPT_ENCODING, IF_NONE_MATCH)

API_PREFIX = "/api/v4"
#: every analytics route answers with and without GitLab's API prefix
PREFIXES = (API_PREFIX, "")
#: a route's path after its prefix, up to the endpoint
ANALYTICS_ROOT = "/projects/{project}/product_analytics/request"
LOAD = "load"
DRY_RUN = "dry-run"
META = "meta"
#: the endpoints that run a query (POST, a body with ``query``)
QUERY_ENDPOINTS = (LOAD, DRY_RUN)
#: the request headers the analytics steps read; nothing else of a request's head is used
HEADERS_READ = (*CREDENTIAL_HEADERS, REQUEST_ID_HEADER, *CLIENT_HEADERS, *ANSWER_HEADERS)
#: the methods named as they are in metrics and spans (any other is "other" there, "_OTHER" in a span)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: the status of a request whose caller went away before its answer was whole (nginx's convention)
CLIENT_CLOSED_REQUEST = 499
#: routes a load balancer or a scraper polls: their access lines are DEBUG, not INFO
PROBE_ROUTES = frozenset({"/-/liveness", "/-/readiness", "/-/metrics", "/-/status"})


def analytics_route(prefix: str, endpoint: str) -> str:
    """The route template, as aiohttp's router knows it and as the access log names it."""
    return f"{prefix}{ANALYTICS_ROOT}/{endpoint}"
