"""Large zero-fills: a tenant's fills queue behind its own, a byte budget for those waiting, and a fill process
that is gone within its grace at shutdown. Run through both doors, with the real fill process."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.cube.fill_queue import FillProcess, filled
from proxy.cube.zerofill import fill_plan
from proxy.errors import ApiError
from proxy.web.keys import PIPELINE
from tests.conftest import REPORTER
from tests.support.queries import big_answer, long_query
from tests.support.waiting import until

LOAD = "/api/v4/projects/{}/product_analytics/request/load"


async def test_a_tenants_fills_queue_behind_its_own_not_everyones(make_client, settings, cube):
    raw = big_answer()

    async def big(call, request):
        return web.Response(body=raw, content_type="application/json")

    cube.behaviour = big
    client = await make_client(settings)
    assert (await client.post(LOAD.format(1), json={"query": long_query(1)}, headers=REPORTER)).status == 200
    fills = client.app[PIPELINE].services.fills
    finished: list[int] = []

    async def one(project: int, limit: int) -> None:
        resp = await client.post(LOAD.format(project), json={"query": long_query(limit)}, headers=REPORTER)
        assert resp.status == 200, await resp.text()
        await resp.read()
        finished.append(project)

    first = [asyncio.ensure_future(one(1, 50_000 - i)) for i in range(6)]  # distinct: nothing coalesces
    for _ in range(500):  # until all six wait for (or hold) project 1's turn: bounded polling
        if fills.waiting().get("gitlab_project_1") == 6:
            break
        await asyncio.sleep(0.01)
    assert fills.waiting() == {"gitlab_project_1": 6}
    second = asyncio.ensure_future(one(2, 1))
    await asyncio.gather(*first, second)
    # one FIFO for everyone would put project 2 last (7th); in turns it is next after the fill under way
    assert finished.index(2) <= 2, finished
    assert fills.waiting() == {} and client.app[PIPELINE].services.whole_answers.held == 0


async def test_large_answers_past_the_fill_budget_are_refused_not_held(make_client, make_settings, cube):
    raw = big_answer()
    arrived = asyncio.Event()
    calls = []

    async def together(call, request):
        calls.append(call)
        if len(calls) == 3:
            arrived.set()
        await arrived.wait()  # the three answers come back at once
        return web.Response(body=raw, content_type="application/json")

    cube.behaviour = together
    client = await make_client(make_settings(cube={"whole_answers_bytes": len(raw) * 3 // 2}))

    async def one(limit: int) -> tuple[int, str | None]:
        resp = await client.post(LOAD.format(1), json={"query": long_query(limit)}, headers=REPORTER)
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")

    answers = sorted(await asyncio.gather(*(one(50_000 - i) for i in range(3))))
    assert answers == [(200, None), (503, "1"), (503, "1")]
    assert client.app[PIPELINE].services.whole_answers.held == 0


async def test_the_fill_process_is_ended_within_its_grace_and_waiters_are_answered():
    fills = FillProcess()
    plan = fill_plan(long_query(1))
    assert plan is not None
    raw = big_answer(120_000)
    assert orjson.loads(await fills.run(plan, big_answer(10)))["results"]  # started, and it works
    [child] = multiprocessing.active_children()
    running = asyncio.ensure_future(fills.run(plan, raw))
    await asyncio.sleep(0.05)  # let it be sent: the fill takes far longer than this grace
    started = time.monotonic()
    await fills.close(0.01)
    assert time.monotonic() - started < 5
    assert not child.is_alive() and child not in multiprocessing.active_children()
    done, _ = await asyncio.wait({running}, timeout=5)
    assert done, "a fill cut off by the shutdown is answered, never left waiting"
    failure = running.exception()
    assert failure is None or getattr(failure, "status", None) == 503


async def test_a_caller_gone_mid_fill_leaves_the_next_fill_its_own_answer():
    """The pipe carries one fill at a time: a caller cancelled while its fill is under way keeps the turn until its
    answer has been read, so the next caller never reads another's answer."""
    fills = FillProcess()
    plan = fill_plan(long_query(1))
    assert plan is not None
    small = big_answer(10)
    try:
        slow = asyncio.ensure_future(fills.run(plan, big_answer(60_000)))
        await asyncio.sleep(0)  # one step of the task: it takes the turn and sends its fill (no wait in between)
        slow.cancel()
        mine = await fills.run(plan, small)
        assert orjson.loads(mine) == orjson.loads(filled(plan, small))
        assert orjson.loads(await fills.run(plan, small)) == orjson.loads(filled(plan, small))
    finally:
        await fills.close(0.01)
    assert multiprocessing.active_children() == []


async def test_a_fill_process_killed_is_replaced():
    """Killed while idle, the next fill starts another and pays nothing; killed under a fill, that fill is a 503 to
    retry (not "shutting down") and the next one starts another."""
    fills = FillProcess()
    plan = fill_plan(long_query(1))
    assert plan is not None
    small = big_answer(10)
    try:
        assert orjson.loads(await fills.run(plan, small))["results"]
        [first] = multiprocessing.active_children()
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        assert orjson.loads(await fills.run(plan, small))["results"]  # idle death: no 503 for anyone
        [second] = multiprocessing.active_children()
        assert second.pid != first.pid
        under_way = asyncio.ensure_future(fills.run(plan, big_answer(120_000)))
        await asyncio.sleep(0)  # one step of the task: it takes the turn and sends its fill
        os.kill(second.pid, signal.SIGKILL)
        with pytest.raises(ApiError) as cut:
            await under_way
        assert cut.value.status == 503 and "retry" in cut.value.body["message"]
        assert "shutting down" not in cut.value.body["message"]
        assert orjson.loads(await fills.run(plan, small))["results"]
        [third] = multiprocessing.active_children()
        assert third.pid not in (first.pid, second.pid)
    finally:
        await fills.close(1.0)
    assert multiprocessing.active_children() == []


async def test_a_fill_error_comes_back_as_the_error():
    fills = FillProcess()
    plan = fill_plan(long_query(1))
    assert plan is not None
    try:
        with pytest.raises(orjson.JSONDecodeError):
            await fills.run(plan, b"{not json")
        assert orjson.loads(await fills.run(plan, big_answer(10)))["results"]  # and the process serves on
    finally:
        await fills.close(1.0)


@contextlib.asynccontextmanager
async def cube_elsewhere(rows: int):
    """The fake Cube in a process of its own (``tests/fakes/cube_process.py``): its URL."""
    from stack.localstack import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.cube_process", str(port), str(rows), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert b"listening" in await asyncio.wait_for(proc.stdout.readline(), 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def fills_beside_plain_loads(port: int, worker: int) -> tuple[list[int], list[float], float, float]:
    """32 large fills of project 1 at once, and project 2's plain loads one after another until they end: the
    fills' statuses, the plain loads' times (as this test sees them), and the memory of the worker and its fill
    process before and at their peak (MB)."""
    from tests.support.processes import descendants, rss_mb

    def memory() -> float:
        return sum(rss_mb(pid) for pid in {worker, *descendants(worker)} if Path(f"/proc/{pid}").exists())

    async with aiohttp.ClientSession() as session:

        async def load(project: int, query: dict) -> tuple[int, float]:
            started = time.perf_counter()
            url = f"http://127.0.0.1:{port}{LOAD.format(project)}"
            async with session.post(url, json={"query": query}, headers=REPORTER) as resp:
                await resp.read()
                return resp.status, time.perf_counter() - started

        assert (await load(1, long_query(1)))[0] == 200  # the fill process started
        assert (await load(2, {"measures": ["TrackedEvents.count"]}))[0] == 200  # project 2's grant cached
        before = peak = memory()
        fills = [asyncio.ensure_future(load(1, long_query(50_000 - i))) for i in range(32)]
        plain: list[float] = []
        while not all(f.done() for f in fills):
            status, seconds = await load(2, {"measures": ["TrackedEvents.count"]})
            assert status == 200
            plain.append(seconds)
            peak = max(peak, memory())
        return [f.result()[0] for f in fills], plain, before, peak


@pytest.mark.serial  # a p99 against a fixed bound
async def test_concurrent_large_fills_bound_memory_and_leave_another_tenant_served(gitlab_url, tmp_path):
    """32 large fills (17 MB answers) of one tenant at once: the worker and its fill process stay within the
    budget's bound, and another tenant's plain load keeps being answered quickly (it took p99 785 ms)."""
    from tests.support.processes import serving

    async with (
        cube_elsewhere(100_000) as large,  # project 1's Cube, answering 17 MB
        cube_elsewhere(1) as other,  # project 2's own Cube: a delay in its answers is the proxy's
    ):
        budget = {
            "server_section": "[limits]\nrate_limit = 0.0\n",
            "cube_section": f'whole_answers_bytes = 67108864\n[projects.2]\ncube_api_base_url = "{other}"\n',
        }
        async with serving(tmp_path, gitlab_url, large, **budget) as (port, worker, access):
            statuses, plain, before, peak = await fills_beside_plain_loads(port, worker)
    # the proxy's own account of each plain load (the test's own clock adds its loop's delays: it reads 17 MB answers)
    entries = [e for e in access() if e["project"] == 2][1:]  # less the warm-up
    worst = max(entries, key=lambda e: e["duration_ms"])
    print(
        f"plain loads {len(entries)}: worst {worst['duration_ms']:.0f} ms in the proxy, {max(plain) * 1000:.0f} ms"
        f" seen here; fills {statuses.count(200)} ok, {statuses.count(503)} refused;"
        f" memory {before:.0f} -> {peak:.0f} MB"
    )
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 3
    # the measure was the p99 (785 ms); the worst is bounded too, looser (a busy machine shows in it)
    own = sorted(e["duration_ms"] for e in entries)
    p99 = own[int(len(own) * 0.99)]
    assert p99 < 150, p99
    assert worst["duration_ms"] < 500, {k: worst[k] for k in ("duration_ms", "cube_ms", "cache", "status")}
    assert peak - before < 400, (before, peak)


@pytest.mark.handed_over  # meta: aiohttp's
async def test_a_continue_wait_rounds_bytes_come_back_when_the_caller_goes_away_mid_pause(
    make_settings, make_client, cube
):
    """A meta call is read whole, its bytes held in the whole-answers budget: a Continue-wait round's are held while
    the proxy pauses before asking again, and given back when the caller goes away meanwhile (they were kept for
    ever when the pause was cancelled)."""
    asked = asyncio.Event()

    async def waiting(call, request):
        asked.set()
        return web.json_response({"error": "Continue wait"})

    cube.behaviour = waiting
    # a buffer limit under the Continue-wait body's size: it is read whole, its bytes held in the budget
    settings = make_settings(cube={"continue_wait_budget": 60.0, "continue_wait_pause": 60.0, "buffer_limit": 16})
    client = await make_client(settings)
    budget = client.app[PIPELINE].services.whole_answers
    meta = asyncio.ensure_future(client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER))
    await asked.wait()
    await until(lambda: budget.held > 0 or meta.done())  # the round's bytes, held through the pause
    meta.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await meta
    await until(lambda: budget.held == 0)
