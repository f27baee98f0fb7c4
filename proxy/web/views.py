"""The analytics routes as thin views: read the body, call the pipeline, write its answer."""

from __future__ import annotations

import asyncio

from aiohttp import web

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
        return _buffered_response(outcome)
    return await stream_response(request, exchange, outcome)


async def meta(request: web.Request) -> web.StreamResponse:
    body = RequestBody(request) if request.method == "POST" else None
    pipeline = request.app[PIPELINE]
    answer = await pipeline.answer_meta(request[EXCHANGE], request.match_info["project"], request.method, body)
    return _buffered_response(answer)


def _buffered_response(answer: Buffered) -> web.Response:
    # X-Request-Id is named by the on_prepare signal, as for every answer
    return web.Response(status=answer.status, body=answer.body, content_type="application/json")


async def stream_response(
    request: web.Request, exchange: Exchange, outcome: Streamed | SharedStream
) -> web.StreamResponse:
    """Send a streamed answer chunk by chunk as it arrives (``Pipeline.relay``: the write deadline); cut the
    connection off if it fails after its 200."""
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    if outcome.content_length is not None:
        response.content_length = outcome.content_length
    try:
        await response.prepare(request)
        if not await request.app[PIPELINE].relay(outcome, exchange, response.write):
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
