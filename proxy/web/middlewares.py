"""Cross-cutting concerns, outermost first (the order ``create_app`` installs them):

1. ``request_id_middleware``: ``Pipeline.begin``; every answer carries the ``X-Request-Id``.
2. ``access_log_middleware``: ``Pipeline.finish``, one line per request, whatever happened.
3. ``error_middleware``: every error becomes a compact JSON body (``Pipeline.fault`` for the unexpected).
4. ``gate_middleware``: ``Pipeline.gate`` on analytics routes (overload 503, credential 401, rate 429).

Each is a thin call into the pipeline (``proxy/pipeline/core.py``), whose steps the fast
lane calls too, in the same order: a behaviour lives there, once.

``on_prepare`` (the app's ``on_response_prepare`` signal) runs as any response's head is
about to go out, whole or streamed, from a view, a middleware or aiohttp's own errors: it
names the request id, adds the answer cache's headers and keeps the pipeline's connection
rule (``closes_connections``).
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.hdrs import CONNECTION
from aiohttp.typedefs import Handler

from proxy.errors import INTERNAL_ERROR, ApiError
from proxy.pipeline.request_id import REQUEST_ID_HEADER
from proxy.web.keys import EXCHANGE, PIPELINE
from proxy.web.views import whole_response

#: the analytics routes' names start with this
ANALYTICS_PREFIX = "analytics."
#: the routes that need no credential, by name: every other route goes through the gate (shedding, credential,
#: rate), a route added without a name or under a name not listed here too (fail closed). The status page and the
#: runtime view check their callers themselves (metrics port, loopback, a GitLab administrator).
OPEN_ROUTES = frozenset(
    {
        "health.liveness",
        "health.readiness",
        "health.runtime",
        "observe.metrics",
        "observe.status",
        "explorer.page",
        "explorer.static",
        "openapi",
    }
)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    request[EXCHANGE] = request.app[PIPELINE].begin(
        request.method, route, request.headers, request.remote, request.raw_path if route is None else "",
        request.content_length,
    )  # fmt: skip
    return await handler(request)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer's head: the request's id, and ``Connection: close`` while the pipeline says so (draining)."""
    exchange = request.get(EXCHANGE)
    pipeline = request.app[PIPELINE]
    if exchange is not None:
        response.headers[REQUEST_ID_HEADER] = exchange.request_id
        if (cache := pipeline.answer_headers(exchange)) is not None:
            response.headers.update(cache)
    if pipeline.closes_connections:  # the caller moves to another worker or replica
        response.force_close()  # the connection ends after this answer...
        response.headers[CONNECTION] = "close"  # ...and says so (aiohttp has framed the head before this signal)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    exchange = request[EXCHANGE]
    try:
        response = await handler(request)
        status = response.status
        # a streamed answer has been written (its count kept as it went); a whole one is about to be
        if not response.prepared and isinstance(response, web.Response):
            exchange.bytes_sent = response.content_length or 0
        return response
    except asyncio.CancelledError:  # the caller hung up (aiohttp cancels its handler): not the proxy's failure
        exchange.hung_up = True
        raise
    finally:
        request.app[PIPELINE].finish(exchange, status)


def _error(request: web.Request, status: int, body: dict[str, object], headers: dict[str, str] | None) -> web.Response:
    """An error answer, compact as the lane writes it, in the same form rule as every answer (a long one gzipped for
    a caller that takes it)."""
    response = whole_response(request, status, orjson.dumps(body), headers=headers)
    response.charset = "utf-8"
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(request, exc.status, exc.body, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in {"Allow", "Retry-After"}}
        return _error(request, exc.status, {"message": f"{exc.status} {exc.reason}"}, headers)
    except Exception:
        request.app[PIPELINE].fault(request[EXCHANGE])
        return _error(request, 500, dict(INTERNAL_ERROR), None)


def _protected(request: web.Request) -> bool:
    """Whether the request's route needs a credential: all but the ``OPEN_ROUTES`` (and no route at all: a 404 or
    405 is aiohttp's to answer)."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return False
    return match_info.route.name not in OPEN_ROUTES


@web.middleware
async def gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _protected(request):
        request.app[PIPELINE].gate(request[EXCHANGE], request.headers, request.query)
    return await handler(request)


MIDDLEWARES = (
    request_id_middleware,
    access_log_middleware,
    error_middleware,
    gate_middleware,
)
