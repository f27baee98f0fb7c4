"""Counters stay true for the whole process tree: read before and after a SIGHUP reload, a worker's kill -9 and a
reload to fewer workers, no counter ever goes back (``rate()`` never sees a false reset), and the lifecycle is
counted itself (reloads by outcome, the last reload's time, worker restarts by cause). A real process, two
workers, the metrics on their own port."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time

import aiohttp

from tests.conftest import QUERY, REPORTER
from tests.support.metrics import value
from tests.support.processes import free_port, is_json, proxy_process, worker_pids
from tests.support.waiting import Lines, eventually, until_counted
from tests.support.wire import LOAD, LOAD_ROUTE


def counters(found: dict) -> dict:
    """Every counter sample of the proxy's own families (a process's CPU is per worker slot, and resets with it)."""
    return {
        key: v
        for key, v in found.items()
        if key[0].startswith("pa_proxy_") and key[0].endswith(("_total", "_count", "_sum", "_bucket"))
    }


def went_back(before: dict, after: dict) -> list:
    return [(key, before[key], after.get(key, 0)) for key in before if after.get(key, 0) < before[key]]


async def test_counters_never_go_back_through_reloads_and_a_killed_worker(cube, gitlab_url, cube_url, tmp_path):
    metrics_port = free_port()
    # the answer cache on for the project: its counters are summed through the reloads like every other
    server = f"workers = 2\nmetrics_port = {metrics_port}\n[limits]\nrate_limit = 0.0\n[projects.1]\nanswer_ttl = 60.0"
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=server) as (proc, port):
        lines = Lines(proc.stderr)
        config = tmp_path / "proxy.toml"
        metrics = f"http://127.0.0.1:{metrics_port}/-/metrics"
        sent = 0
        try:
            await eventually(
                lambda: lines.having("listening"), "the second worker listening (proxy_process saw the first)"
            )
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

                async def traffic(n: int) -> None:
                    nonlocal sent
                    for i in range(n):  # a keep-alive connection each: both workers serve, through the lane
                        url = f"http://127.0.0.1:{port}{LOAD}"
                        body = {"query": {**QUERY, "limit": sent + i + 1}}
                        async with aiohttp.ClientSession() as own, own.post(url, json=body, headers=REPORTER) as resp:
                            assert resp.status == 200
                    sent += n

                await traffic(20)
                seen = [counters(await until_counted(session, metrics, sent))]
                assert value(seen[0] | {}, "pa_proxy_lane_requests_total", outcome="served") == 20

                # 1. SIGHUP, the same settings: a new generation, the old one drains and exits
                proc.send_signal(signal.SIGHUP)
                await eventually(lambda: lines.having("reloaded:"), "the reload")
                await eventually(lambda: len(worker_pids(proc.pid)) == 2, "the old generation gone", 30)
                await traffic(10)
                seen.append(counters(await until_counted(session, metrics, sent)))

                # 2. a worker killed outright: replaced, its counts kept
                victim = worker_pids(proc.pid)[0]
                os.kill(victim, signal.SIGKILL)
                await eventually(lambda: lines.having("starting another"), "the worker replaced")
                await eventually(lambda: len(worker_pids(proc.pid)) == 2 and victim not in worker_pids(proc.pid), "two")
                await traffic(10)
                seen.append(counters(await until_counted(session, metrics, sent)))

                # 3. a reload to fewer workers
                config.write_text(config.read_text().replace("workers = 2", "workers = 1"))
                proc.send_signal(signal.SIGHUP)
                await eventually(lambda: len(lines.having("reloaded:")) == 2, "the second reload")
                await eventually(lambda: len(worker_pids(proc.pid)) == 1, "one worker left", 30)
                await traffic(10)
                found = await until_counted(session, metrics, sent)
                seen.append(counters(found))
                for before, after in itertools.pairwise(seen):
                    assert went_back(before, after) == []
                assert value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="200") == 50
                assert value(found, "pa_proxy_lane_requests_total", outcome="served") == 50
                assert value(found, "pa_proxy_answer_cache_total", result="miss") == 50  # each query a new one
                assert value(found, "pa_proxy_reloads_total", outcome="ok") == 2
                assert value(found, "pa_proxy_worker_restarts_total", cause="killed") == 1
                assert time.time() - 60 < value(found, "pa_proxy_last_reload_time_seconds") <= time.time()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            # and through all of it, every line on stderr was JSON
            assert [line for line in await lines.ended(10) if not is_json(line)] == []
        finally:
            await lines.close()
