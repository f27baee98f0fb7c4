"""The analytics routes as thin views: read the body, call the pipeline, write its answer."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.encoding import IDENTITY
from proxy.errors import bad_request
from proxy.pipeline.answers import Buffered, SharedStream, Streamed
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.request_body import inflate, too_large
from proxy.pipeline.routes import DRY_RUN, LOAD
from proxy.web.keys import EXCHANGE, PIPELINE


class RequestBody:
    """aiohttp's request body for the pipeline: read (once, when the pipeline asks) within the size limit and
    ``body_timeout``, then inflated as its ``Content-Encoding`` says within that limit (aiohttp's server inflates
    nothing: ``head_rules.server_limits``); a body that fails its encoding or its framing is a 400."""

    __slots__ = ("_request", "length")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.length = request.content_length

    async def read(self) -> bytes:
        request = self._request
        limits = request.app[PIPELINE].settings.limits
        try:
            if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
                raw = await request.read()
            else:
                async with asyncio.timeout(limits.body_timeout):
                    raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limits.max_body_bytes) from None
        except TimeoutError:
            raise bad_request(f"the request body did not arrive within {limits.body_timeout:g} s", status=408) from None
        except web.RequestPayloadError:
            raise bad_request("the request body's framing is broken (Content-Length or chunks)") from None
        return inflate(raw, request.headers.get("Content-Encoding", ""), limits.max_body_bytes)


async def load(request: web.Request) -> web.StreamResponse:
    return await _query(request, LOAD)


async def dry_run(request: web.Request) -> web.StreamResponse:
    return await _query(request, DRY_RUN)


async def _query(request: web.Request, endpoint: str) -> web.StreamResponse:
    exchange = request[EXCHANGE]
    project = request.match_info["project"]
    outcome = await request.app[PIPELINE].answer_query(exchange, endpoint, project, RequestBody(request), request.query)
    if isinstance(outcome, Buffered):
        return whole_response(request, outcome.status, outcome.body, outcome.coding, outcome.tag)
    return await stream_response(request, exchange, outcome)


async def meta(request: web.Request) -> web.StreamResponse:
    body = RequestBody(request) if request.method == "POST" else None
    pipeline = request.app[PIPELINE]
    answer = await pipeline.answer_meta(request[EXCHANGE], request.match_info["project"], request.method, body)
    return whole_response(request, answer.status, answer.body, answer.coding, answer.tag)


def whole_response(
    request: web.Request,
    status: int,
    body: bytes,
    coding: str = IDENTITY,
    tag: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A whole answer (or error) in the form the pipeline gives this caller: gzip, ``Vary``, ``ETag``, a 304.
    X-Request-Id and the cache's headers are named by the on_prepare signal, as for every answer."""
    exchange = request.get(EXCHANGE)
    form: dict[str, str] = {}
    if exchange is not None:
        status, body, form = request.app[PIPELINE].whole(exchange, status, body, coding, tag)
    if status == 304:
        return web.Response(status=304, headers={**(headers or {}), **form})
    response = web.Response(status=status, body=body, headers={**(headers or {}), **form})
    response.content_type = "application/json"
    return response


async def stream_response(
    request: web.Request, exchange: Exchange, outcome: Streamed | SharedStream
) -> web.StreamResponse:
    """Send a streamed answer chunk by chunk as it arrives (``Pipeline.relay``: the write deadline); cut the
    connection off if it fails after its 200."""
    pipeline = request.app[PIPELINE]
    response = web.StreamResponse(status=200, headers=pipeline.stream_headers(exchange))
    response.content_type = "application/json"
    if outcome.content_length is not None and not exchange.gzip:  # gzipped as it goes: its length is unknown
        response.content_length = outcome.content_length
    try:
        await response.prepare(request)
        if not await pipeline.relay(outcome, exchange, response.write):
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionAbortedError("the streamed answer failed mid-way")
        await response.write_eof()
    except (ConnectionResetError, ConnectionAbortedError):
        response.force_close()
        exchange.hung_up = not exchange.aborted  # not cut off by the proxy: the caller went away
    finally:
        outcome.close()
    return response
