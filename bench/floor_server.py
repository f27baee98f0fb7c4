"""The floor of any aiohttp server here: answer every POST from memory, no upstream at all.

``python -m bench.floor_server PORT``: the benchmark runs it beside the proxy so the
report shows how much of the proxy's CPU per request aiohttp's server alone costs.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

from bench.procs import FAST_BODY

BODY = FAST_BODY.encode()


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/-/liveness", ready)
    app.router.add_post("/{tail:.*}", answer)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
