"""The floor of any aiohttp proxy: one shared ClientSession, no auth, no JWT, nothing else.

``python -m bench.plain_proxy PORT UPSTREAM_URL``: every POST is forwarded to the
upstream and its answer returned. The benchmark runs it beside the real proxy to show
how much of the real proxy's cost is aiohttp itself.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].post(request.app["upstream"], data=body) as upstream:
        return web.Response(status=upstream.status, body=await upstream.read(), content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    yield
    await app[SESSION].close()


def serve(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1 with uvloop and no access log, as the proxy runs; GET /-/liveness answers."""
    app.router.add_get("/-/liveness", ready)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    app = web.Application()
    app["upstream"] = sys.argv[2]
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    serve(app, int(sys.argv[1]))


if __name__ == "__main__":
    main()
