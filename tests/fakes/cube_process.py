"""The fake Cube in a process of its own, for tests that time the proxy while Cube sends large answers (a Cube
in the test's own process would add its loop's delays to what the test measures).

``python -m tests.fakes.cube_process PORT ROWS``: project 1's loads answer ROWS day rows
(``tests.test_fair_fills.big_answer``), every other call as the fake Cube does. It prints
``listening`` once it serves, and exits on SIGTERM.
"""

from __future__ import annotations

import sys

from aiohttp import web

from tests.conftest import CUBE_KEY
from tests.fakes.cube import CubeCall, FakeCube


def main() -> None:
    from tests.support.queries import big_answer

    port, rows = int(sys.argv[1]), int(sys.argv[2])
    raw = big_answer(rows)
    cube = FakeCube(CUBE_KEY)

    async def answer(call: CubeCall, request: web.Request) -> web.StreamResponse:
        cube.calls.clear()  # nothing is asked of this process's record: keep it from growing
        if call.endpoint == "load" and call.claims["appId"] == "gitlab_project_1":
            return web.Response(body=raw, content_type="application/json")
        return await cube.default(call, request)

    cube.behaviour = answer

    async def announce(app: web.Application) -> None:
        print("listening", flush=True)

    app = cube.app()
    app.on_startup.append(announce)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
