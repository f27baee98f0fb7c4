"""The tests' fake GitLab as a process of its own, for the benchmarks: ``python -m bench.fake_gitlab PORT``."""

from __future__ import annotations

import sys

from aiohttp import web

from tests.fakes.gitlab import FakeGitLab


async def _ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


if __name__ == "__main__":
    app = FakeGitLab().app()
    app.router.add_get("/-/ready", _ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
