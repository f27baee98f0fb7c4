"""A trace collector for the benchmarks, as a process of its own: ``python -m bench.otlp_sink PORT``.

It is the tests' OTLP/HTTP receiver (``tests/support/otlp_receiver.py``: the protobuf decoded as a collector
decodes it); ``GET /-/spans`` says how many spans it was sent, so a run can say whether any were dropped.
"""

from __future__ import annotations

import sys

from aiohttp import web

from tests.support.otlp_receiver import Receiver


def app() -> web.Application:
    receiver = Receiver()
    application = receiver.app()

    async def spans(request: web.Request) -> web.Response:
        return web.json_response({"spans": len(receiver.spans), "exports": len(receiver.bodies)})

    application.router.add_get("/-/spans", spans)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
