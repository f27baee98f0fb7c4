"""The floor of any aiohttp server here: answer every POST from memory, no upstream at all.

``python -m bench.floor_server PORT``: the benchmark runs it beside the proxy so the
report shows how much of the proxy's CPU per request aiohttp's server alone costs.
"""

from __future__ import annotations

import sys

from aiohttp import web

from bench.plain_proxy import serve
from bench.procs import FAST_BODY

BODY = FAST_BODY.encode()


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    serve(app, int(sys.argv[1]))


if __name__ == "__main__":
    main()
