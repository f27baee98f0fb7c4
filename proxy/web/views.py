"""The analytics routes as thin views: read the body, call the pipeline, write its answer."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.cube.client import Buffered, Streamed
from proxy.errors import CallerStalled, bad_request
from proxy.pipeline.coalesce import SharedStream
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.request_body import too_large
from proxy.pipeline.request_id import REQUEST_ID_HEADER
from proxy.pipeline.routes import DRY_RUN, LOAD
from proxy.web.keys import EXCHANGE, PIPELINE


async def read_body(request: web.Request) -> bytes:
    limits = request.app[PIPELINE].settings.limits
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


async def load(request: web.Request) -> web.StreamResponse:
    return await _query(request, LOAD)


async def dry_run(request: web.Request) -> web.StreamResponse:
    return await _query(request, DRY_RUN)


async def _query(request: web.Request, endpoint: str) -> web.StreamResponse:
    raw = await read_body(request)
    exchange = request[EXCHANGE]
    project = request.match_info["project"]
    outcome = await request.app[PIPELINE].answer_query(exchange, endpoint, project, raw, request.query)
    if isinstance(outcome, Buffered):
        return _buffered_response(outcome)
    return await stream_response(request, exchange, outcome)


async def meta(request: web.Request) -> web.StreamResponse:
    raw = await read_body(request) if request.method == "POST" else None
    pipeline = request.app[PIPELINE]
    answer = await pipeline.answer_meta(request[EXCHANGE], request.match_info["project"], request.method, raw)
    return _buffered_response(answer)


def _buffered_response(answer: Buffered) -> web.Response:
    # X-Request-Id is added by request_id_middleware (streams set it themselves before prepare)
    return web.Response(status=answer.status, body=answer.body, content_type="application/json")


async def stream_response(
    request: web.Request, exchange: Exchange, outcome: Streamed | SharedStream
) -> web.StreamResponse:
    """Send a streamed answer chunk by chunk as it arrives; cut the connection off if it fails after its 200."""
    response = web.StreamResponse(status=200, headers={REQUEST_ID_HEADER: exchange.request_id})
    response.content_type = "application/json"
    if request.app[PIPELINE].draining:
        response.force_close()
    if outcome.content_length is not None:
        response.content_length = outcome.content_length
    try:
        await response.prepare(request)
        write_timeout = request.app[PIPELINE].write_timeout
        try:
            async for chunk in outcome.chunks():
                try:
                    async with asyncio.timeout(write_timeout):  # the caller must read within this
                        await response.write(chunk)
                    exchange.bytes_sent += len(chunk)
                except TimeoutError:
                    raise CallerStalled(f"the caller read nothing for {write_timeout:g} s") from None
        except (ConnectionResetError, ConnectionAbortedError):
            raise  # the caller left
        except Exception as exc:  # Cube's body broke, or a fault: the 200 is out, so only cutting it off is left
            request.app[PIPELINE].stream_failed(exchange, exc)
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionAbortedError("the streamed answer failed mid-way") from None
        await response.write_eof()
    except (ConnectionResetError, ConnectionAbortedError):
        response.force_close()
    finally:
        outcome.close()
    return response
