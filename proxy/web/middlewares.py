"""Cross-cutting concerns, outermost first (the order ``create_app`` installs them):

1. ``request_id_middleware``: every answer carries an ``X-Request-Id`` in Cube's form.
2. ``access_log_middleware``: one structured line per request, never a token.
3. ``error_middleware``: every error becomes a JSON body; nothing internal leaks.
4. ``admission_middleware``: analytics routes are shed (503) while the event loop lags (overload).
5. ``credential_middleware``: analytics routes need a credential (401), within the rate limit (429).

Each concern's work is a plain function here (``admit``, ``authenticate``, ``log_exchange``,
``log_unhandled``), because the fast lane (``proxy/fast_lane.py``, ``_Connection._answer``)
serves plain load and dry-run calls without this chain and calls the same functions in
the same order. A concern added or changed here must be added or changed there too; every
HTTP test runs against both, so a difference in what callers see fails them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.auth.credentials import Credential, extract_credential
from proxy.errors import INTERNAL_ERROR, ApiError
from proxy.pipeline.access_log import AccessLog
from proxy.pipeline.request_id import normalise_request_id
from proxy.web.keys import ACCESS_LOG, RATE_LIMITER, REQUEST_IDS, SHEDDER
from proxy.web.request_keys import ABORTED, CACHE, CREDENTIAL, PROJECT, REQUEST_ID

log = logging.getLogger(__name__)

#: route names that need a caller's credential start with this.
PROTECTED_PREFIX = "analytics."


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = normalise_request_id(request.headers.get("X-Request-Id"), request.app[REQUEST_IDS])
    request[REQUEST_ID] = request_id
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        access_log = request.app[ACCESS_LOG]
        if access_log.enabled():
            _log_request(access_log, request, status, started)


def _log_request(access_log: AccessLog, request: web.Request, status: int, started: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    log_exchange(access_log, request.method, route, status, started, request)


def log_exchange(
    access_log: AccessLog, method: str, route: str | None, status: int, started: float, record: Mapping[Any, Any]
) -> None:
    """One access-log line; ``record`` holds what the request's handling noted (its id, project, cache)."""
    access_log.write(
        f"{method} {route or '-'} {status}",
        {
            "event": "request",
            "request_id": record.get(REQUEST_ID),
            "method": method,
            "route": route,
            "project": record.get(PROJECT),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "cache": record.get(CACHE),
            "aborted": record.get(ABORTED, False),
        },
    )


def error_response(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> web.Response:
    # compact, as the fast lane writes it (and as Cube's own bodies are)
    return web.json_response(body, status=status, headers=headers, dumps=_compact_json)


def _compact_json(value: object) -> str:
    return orjson.dumps(value).decode()


def log_unhandled(record: Mapping[Any, Any]) -> None:
    """Called from an ``except``: the traceback goes to the log, never to the caller (who gets a plain 500)."""
    log.exception("unhandled error", extra={"event": "unhandled", "request_id": record.get(REQUEST_ID)})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.body, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in {"Allow", "Retry-After"}}
        return error_response(exc.status, {"message": f"{exc.status} {exc.reason}"}, headers)
    except Exception:
        log_unhandled(request)
        return error_response(500, dict(INTERNAL_ERROR))


def _protected(request: web.Request) -> bool:
    name = request.match_info.route.name
    return name is not None and name.startswith(PROTECTED_PREFIX)


def admit(app: web.Application) -> None:
    """Shed an analytics request (503) while the event loop lags; a no-op unless ``shed_lag_ms`` is set."""
    shedder = app[SHEDDER]
    if shedder.enabled and shedder.overloaded():
        raise ApiError(503, {"message": "The proxy is overloaded; retry shortly"}, {"Retry-After": "1"})


def authenticate(app: web.Application, headers: Mapping[str, str], query: Mapping[str, str]) -> Credential:
    """The caller's credential (401 without one), within the per-caller rate limit (429)."""
    credential = extract_credential(headers, query)
    limiter = app[RATE_LIMITER]
    if limiter.enabled:
        wait = limiter.check(credential.key, time.monotonic())
        if wait is not None:
            raise ApiError(
                429,
                {"message": f"Too many requests from this caller; retry after {wait} s"},
                {"Retry-After": str(wait)},
            )
    return credential


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[SHEDDER].enabled and _protected(request):
        admit(request.app)
    return await handler(request)


@web.middleware
async def credential_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _protected(request):
        request[CREDENTIAL] = authenticate(request.app, request.headers, request.query)
    return await handler(request)


MIDDLEWARES = (
    request_id_middleware,
    access_log_middleware,
    error_middleware,
    admission_middleware,
    credential_middleware,
)
