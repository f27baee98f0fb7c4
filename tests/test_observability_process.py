"""Metrics across worker processes, and the SIGTERM sequence, on the proxy as production runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp

from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.support.metrics import scraped, value
from tests.support.processes import free_port, kill_group, proxy_process, wait_for_line, worker_pids
from tests.support.waiting import until_counted
from tests.support.wire import LOAD, LOAD_ROUTE


async def test_two_workers_metrics_add_up_and_a_dead_workers_counts_stay(cube, gitlab_url, cube_url, tmp_path):
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"[server]\nport = {port}\nworkers = 2\ndrain_delay = 0\nmetrics_port = {metrics_port}\n"
        f'[gitlab]\nurl = "{gitlab_url}"\n'
        f'[product_analytics]\ncube_api_base_url = "{cube_url}"\ncube_api_key = "{CUBE_KEY}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--config", str(config), stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    metrics = f"http://127.0.0.1:{metrics_port}/-/metrics"
    sent = 40
    try:
        await wait_for_line(proc.stderr, "listening")
        await wait_for_line(proc.stderr, "listening")  # one line per worker
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(sent):  # a connection each: the kernel spreads them over both workers
                async with session.post(
                    f"http://127.0.0.1:{port}{LOAD}", json={"query": {**QUERY, "limit": n + 1}}, headers=REPORTER
                ) as resp:
                    assert resp.status == 200
            found = await until_counted(session, metrics, sent)
            assert value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="200") == sent
            assert value(found, "pa_proxy_cube_calls_total", endpoint="load", outcome="data") == sent == len(cube.calls)
            slots = {dict(labels)["slot"] for name, labels in found if name == "process_resident_memory_bytes"}
            assert slots == {"0", "1"}  # per worker slot, not per pid: a replaced worker makes no new series
            public = await session.get(f"http://127.0.0.1:{port}/-/metrics")
            assert public.status == 404  # a metrics port takes them off the public listener
            # a worker killed outright: the parent replaces it, and what it counted is still counted
            victim = sorted(worker_pids(proc.pid))[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while True:
                found = await scraped(session, metrics)
                replaced = value(found, "pa_proxy_worker_restarts_total", cause="killed") == 1
                live = worker_pids(proc.pid)
                shown = {dict(labels)["slot"] for name, labels in found if name == "process_resident_memory_bytes"}
                if (
                    replaced and len(live) == 2 and victim not in live and shown == slots
                ) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)  # polling for the replacement's first snapshot, up to the deadline
            assert replaced and victim not in live and shown == slots  # the replacement took its slot's series
            assert value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="200") == sent
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        kill_group(proc.pid)
        await proc.wait()


async def test_sigterm_fails_readiness_at_once_serves_through_the_drain_delay_then_drains(
    cube, gitlab_url, cube_url, tmp_path
):
    delay = 2.0
    async with proxy_process(tmp_path, gitlab_url, cube_url, drain_delay=delay) as (proc, port):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            assert (await session.get(f"{base}/-/readiness")).status == 200
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await wait_for_line(proc.stderr, "readiness fails now")
            ready = await session.get(f"{base}/-/readiness")
            assert (ready.status, (await ready.json())["status"]) == (503, "shutting down")
            served = await session.post(f"{base}{LOAD}", json={"query": QUERY}, headers=REPORTER)
            assert served.status == 200  # the listener still serves while the load balancer catches up
            assert served.headers["Connection"] == "close"  # and moves its callers on
            assert time.monotonic() - signalled < delay
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert time.monotonic() - signalled >= delay
