"""Every process of the proxy's tree exits in bounded time: after a large zero-fill (which starts the fill
process), on SIGTERM, after a SIGHUP reload, and when a worker is killed with ``kill -9``. Real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import REPORTER
from tests.support.processes import descendants, ended, is_json, proxy_process, worker_pids
from tests.support.queries import big_answer, long_query
from tests.support.waiting import Lines, eventually

LOAD = "/api/v4/projects/1/product_analytics/request/load"
SHUTDOWN_TIMEOUT = 5.0


async def large_fill(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}{LOAD}"
        async with session.post(url, json={"query": long_query(1)}, headers=REPORTER) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


@pytest.fixture
def big_cube(cube):
    raw = big_answer()

    async def big(call, request):
        return web.Response(body=raw, content_type="application/json")

    cube.behaviour = big
    return cube


@pytest.mark.parametrize("before_sigterm", ["nothing", "sighup", "kill_worker"])
async def test_every_process_of_the_tree_exits_after_a_large_fill(
    big_cube, gitlab_url, cube_url, tmp_path, before_sigterm
):
    server = "[limits]\nrate_limit = 0.0"
    async with proxy_process(
        tmp_path, gitlab_url, cube_url, server_section=server, shutdown_timeout=SHUTDOWN_TIMEOUT
    ) as (proc, port):
        lines = Lines(proc.stderr)
        try:
            await large_fill(port)
            tree = descendants(proc.pid)
            [worker] = worker_pids(proc.pid)
            assert len(tree) >= 2, tree  # the worker and its fill process
            if before_sigterm == "sighup":
                proc.send_signal(signal.SIGHUP)
                await eventually(lambda: lines.having("reloaded:"), "the reload")
                await asyncio.wait_for(ended(worker), SHUTDOWN_TIMEOUT + 5)  # the old generation drained
                await eventually(lambda: not alive(tree), "the old worker's whole tree gone", SHUTDOWN_TIMEOUT + 5)
                await large_fill(port)  # the new worker fills too
                tree = descendants(proc.pid)
            elif before_sigterm == "kill_worker":
                os.kill(worker, signal.SIGKILL)
                await eventually(lambda: lines.having("starting another"), "the worker replaced")
                # its fill process, orphaned, sees its task queue close and ends by itself
                await eventually(lambda: not alive(tree), "the killed worker's tree gone", SHUTDOWN_TIMEOUT + 5)
                await eventually(lambda: lines.having("listening"), "the new worker listening")
                await large_fill(port)
                tree = descendants(proc.pid)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), SHUTDOWN_TIMEOUT + 5) == 0
            await eventually(lambda: not alive(tree), "every process of the tree gone", SHUTDOWN_TIMEOUT + 1)
            assert time.monotonic() - started < SHUTDOWN_TIMEOUT + 1  # drain_delay is 0 here
            # every line any process of the tree wrote to stderr is JSON, its helpers' warnings included
            assert [line for line in await lines.ended(10) if not is_json(line)] == []
        finally:
            await lines.close()
