"""The fleet scenario: a dashboard burst with a new token at 1, 2 and 4 workers, with and without Redis.

GitLab and Cube are the tests' fakes, served from this process so their calls can be
counted; each proxy is a real process (``python -m proxy``). Per setting: the GitLab calls a
20-panel dashboard costs (each panel on its own connection, so the kernel spreads them over
the workers), its p95, and the Cube meta calls a burst of 20 meta requests costs. Run alone
with ``python -m bench.fleet``; ``make bench`` runs it too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.procs import proxy_process
from tests.fakes.cube import FakeCube
from tests.fakes.gitlab import FakeGitLab, FakeToken
from tests.support.redis_server import RedisServer

KEY = "bench-fleet-cube-key-of-at-least-32-bytes!!"
SIGNING_KEY = "bench-fleet-signing-key-of-at-least-32-bytes"
PANELS = 20
LOAD = "/api/v4/projects/1/product_analytics/request/load"
META = "/api/v4/projects/1/product_analytics/request/meta"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _burst(url: str, n: int, token: str, method: str) -> tuple[list[int], list[float]]:
    async def one(i: int) -> tuple[int, float]:
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            body = {"query": {"measures": ["TrackedEvents.count"], "limit": i + 1}} if method == "POST" else None
            async with session.request(method, url, json=body, headers={"PRIVATE-TOKEN": token}) as resp:
                await resp.read()
                return resp.status, time.monotonic() - started

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return [s for s, _ in results], [t for _, t in results]


async def fleet_burst(workdir: Path) -> dict[str, Any]:
    gitlab, cube = FakeGitLab(), FakeCube(KEY)
    gitlab_runner, gitlab_url = await _serve(gitlab.app())
    cube_runner, cube_url = await _serve(cube.app())
    redis = RedisServer(workdir / "redis")
    redis.start()
    tokens = itertools.count(1)
    rows: dict[str, Any] = {}
    try:
        for workers, shared in itertools.product((1, 2, 4), (False, True)):
            sections: dict[str, dict[str, object]] = {"server": {"workers": workers}}
            if shared:
                # a prefix of its own: nothing this setting counts was stored by another
                sections["redis"] = {"url": redis.url, "signing_key": SIGNING_KEY, "key_prefix": f"bench-{workers}:"}
            name = f"{workers}_workers_{'redis' if shared else 'local'}"
            process, port = proxy_process(workdir, f"fleet-{name}", gitlab_url, cube_url, KEY, **sections)
            await asyncio.to_thread(process.start)
            try:
                token = f"glpat-bench-fleet-{next(tokens):08d}"
                gitlab.tokens[token] = FakeToken(4, ["api"])  # a maintainer nobody has asked about yet
                gitlab.calls.clear()
                cube.calls.clear()
                statuses, times = await _burst(f"http://127.0.0.1:{port}{LOAD}", PANELS, token, "POST")
                gitlab_calls = sum(gitlab.calls.values())
                meta_statuses, _ = await _burst(f"http://127.0.0.1:{port}{META}", PANELS, token, "GET")
                times.sort()
                rows[name] = {
                    "workers": workers,
                    "redis": shared,
                    "gitlab_calls": gitlab_calls,
                    "cube_meta_calls": len(cube.calls_to("meta")),
                    "p50_ms": round(statistics.median(times) * 1000, 1),
                    "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 1),
                    "errors": sum(1 for s in statuses + meta_statuses if s != 200),
                }
            finally:
                await asyncio.to_thread(process.stop)
    finally:
        redis.stop()
        await gitlab_runner.cleanup()
        await cube_runner.cleanup()
    local4, shared4 = rows["4_workers_local"], rows["4_workers_redis"]
    return {
        **rows,
        "panels": PANELS,
        # GitLab calls of a new token's dashboard at 4 workers, without Redis over with it
        "fleet_gitlab_call_ratio_4_workers": round(local4["gitlab_calls"] / max(1, shared4["gitlab_calls"]), 1),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pa-proxy-fleet-") as tmp:
        print(json.dumps(asyncio.run(fleet_burst(Path(tmp))), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
