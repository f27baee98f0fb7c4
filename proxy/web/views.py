"""The three analytics routes: thin views over authorisation, signing and forwarding."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from aiohttp import web

from proxy.auth.authorizer import Grant
from proxy.cube.client import Buffered, Streamed
from proxy.cube.forward import UpstreamCall
from proxy.cube.tenants import Tenant
from proxy.cube.zerofill import fill_plan
from proxy.errors import ApiError, bad_request, not_enabled
from proxy.pipeline.coalesce import Outcome, SharedStream, StreamBroken
from proxy.pipeline.request_body import QueryRequest, parse_body, query_request, too_large
from proxy.web.keys import AUTHORIZER, COALESCER, FORWARDER, META_CACHE, SETTINGS, SIGNER, TENANTS
from proxy.web.request_keys import ABORTED, CACHE, CREDENTIAL, PROJECT, REQUEST_ID

log = logging.getLogger(__name__)


class ContinueWaitAnswer(Exception):
    """A meta answer that must reach the caller but never the cache."""

    def __init__(self, answer: Buffered) -> None:
        super().__init__("continue wait")
        self.answer = answer


async def read_body(request: web.Request) -> bytes:
    limits = request.app[SETTINGS].limits
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise too_large(limits.max_body_bytes)
    try:
        if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
            return await request.read()
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limits.max_body_bytes) from None
    except TimeoutError:
        raise bad_request(f"the request body did not arrive within {limits.body_timeout:g} s", status=408) from None


async def _grant_tenant(
    app: web.Application, record: MutableMapping[Any, Any], project_ref: str, method: str
) -> tuple[Tenant, Grant]:
    """Authorise the caller for the route's project; its tenant, or 404 when analytics is off."""
    grant = await app[AUTHORIZER].authorize(record[CREDENTIAL], project_ref, method)
    record[PROJECT] = grant.project_id
    tenant = app[TENANTS].get(grant.project_id)
    if tenant is None:
        raise not_enabled()
    return tenant, grant


async def load(request: web.Request) -> web.StreamResponse:
    return await _query(request, "load")


async def dry_run(request: web.Request) -> web.StreamResponse:
    return await _query(request, "dry-run")


async def _query(request: web.Request, endpoint: str) -> web.StreamResponse:
    raw = await read_body(request)
    outcome = await answer_query(request.app, request, endpoint, request.match_info["project"], raw, request.query)
    return await respond(request, outcome)


async def answer_query(
    app: web.Application,
    record: MutableMapping[Any, Any],
    endpoint: str,
    project_ref: str,
    raw: bytes,
    query_params: Mapping[str, str],
) -> Outcome:
    """A load or dry-run call, past the middlewares: ``record`` holds the request's id and credential.

    Both ways of serving a call use it: the aiohttp view above, and the fast lane
    (``proxy/fast_lane.py``), which passes a plain dict as ``record``.
    """
    body = parse_body(raw, app[SETTINGS].limits.max_json_depth)
    query = query_request(body, query_params)
    tenant, grant = await _grant_tenant(app, record, project_ref, "POST")
    gitlab_token = None
    if query.include_token:
        gitlab_token = await app[AUTHORIZER].mint_token(record[CREDENTIAL], grant)
    call = UpstreamCall(
        tenant=tenant,
        endpoint=endpoint,
        method="POST",
        jwt=app[SIGNER].sign(tenant, int(time.time()), gitlab_token),
        request_id=record[REQUEST_ID],
        payload=query.payload,
        fill=fill_plan(query.query) if endpoint == "load" else None,
    )
    forwarder = app[FORWARDER]
    outcome, shared = await app[COALESCER].run(_coalesce_key(tenant, endpoint, query), lambda: forwarder.fetch(call))
    record[CACHE] = "shared" if shared else "miss"
    return outcome


def _coalesce_key(tenant: Tenant, endpoint: str, query: QueryRequest) -> tuple[Tenant, str, bytes] | None:
    if query.include_token:
        return None  # each such call carries its own minted token
    return (tenant, endpoint, query.fingerprint)


async def meta(request: web.Request) -> web.StreamResponse:
    app = request.app
    if request.method == "POST":
        parse_body(await read_body(request), app[SETTINGS].limits.max_json_depth)
    tenant, _ = await _grant_tenant(app, request, request.match_info["project"], request.method)

    async def load_meta() -> Buffered:
        call = UpstreamCall(
            tenant=tenant,
            endpoint="meta",
            method="GET",
            jwt=app[SIGNER].sign(tenant, int(time.time())),
            request_id=request[REQUEST_ID],
            payload=None,
            whole=True,
        )
        answer = await app[FORWARDER].fetch(call)
        assert isinstance(answer, Buffered)  # meta is asked for whole (call.whole)
        if answer.continue_wait:
            raise ContinueWaitAnswer(answer)
        if answer.status != 200:
            raise ApiError(
                answer.status, answer.parsed if isinstance(answer.parsed, dict) else {"message": "Cube error"}
            )
        return answer

    try:
        answer, hit = await app[META_CACHE].get(tenant, load_meta)
    except ContinueWaitAnswer as cw:
        answer, hit = cw.answer, False
    request[CACHE] = "hit" if hit else "miss"
    return _buffered_response(answer)


def _buffered_response(answer: Buffered) -> web.Response:
    # X-Request-Id is added by request_id_middleware (streams set it themselves before prepare)
    return web.Response(status=answer.status, body=answer.body, content_type="application/json")


async def respond(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    """Send an answer: whole, or streamed chunk by chunk as it arrives (aborted if it breaks)."""
    if isinstance(outcome, Buffered):
        return _buffered_response(outcome)
    return await stream_response(request, outcome)


async def stream_response(request: web.Request, outcome: Streamed | SharedStream) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"X-Request-Id": request[REQUEST_ID]})
    response.content_type = "application/json"
    if outcome.content_length is not None:
        response.content_length = outcome.content_length
    try:
        await response.prepare(request)
        try:
            async for chunk in outcome.chunks():
                await response.write(chunk)
        except (ApiError, StreamBroken) as exc:  # Cube's body broke (the caller leaving is a ConnectionResetError)
            log.warning(
                "upstream body broke mid-stream; aborting the caller's answer",
                extra={"event": "stream_aborted", "request_id": request[REQUEST_ID], "error": type(exc).__name__},
            )
            request[ABORTED] = True
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionAbortedError("upstream body broke mid-stream") from None
        await response.write_eof()
    except (ConnectionResetError, ConnectionAbortedError):
        response.force_close()
    finally:
        outcome.close()
    return response
