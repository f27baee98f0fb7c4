"""Large zero-fills: a tenant's fills queue behind its own, a byte budget for those waiting, and a fill process
that is gone within its grace at shutdown. Run through both doors, with the real fill process."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import orjson
from aiohttp import web

from proxy.cube.fill_queue import FillProcess
from proxy.cube.zerofill import fill_plan
from proxy.web.keys import PIPELINE
from tests.conftest import REPORTER
from tests.test_zerofill import M, query

LOAD = "/api/v4/projects/{}/product_analytics/request/load"


def long_query(limit: int) -> dict:
    """Six years by day (GitLab fills an inDateRange filter): over the loop's share, so filled in the fill process."""
    q = query(start="2015-01-01", end="2020-12-31")
    q["limit"] = limit
    return q


def big_answer(rows: int = 40_000) -> bytes:
    data = [
        {f"{M}.day": f"2016-{d % 12 + 1:02d}-{d % 28 + 1:02d}T00:00:00.000", "TrackedEvents.count": str(d)}
        | {"TrackedEvents.eventName": f"event-{d:040d}"}
        for d in range(rows)
    ]
    return orjson.dumps({"queryType": "regularQuery", "results": [{"data": data}]})


async def test_a_tenants_fills_queue_behind_its_own_not_everyones(make_client, settings, cube):
    raw = big_answer()

    async def big(call, request):
        return web.Response(body=raw, content_type="application/json")

    cube.behaviour = big
    client = await make_client(settings)
    assert (await client.post(LOAD.format(1), json={"query": long_query(1)}, headers=REPORTER)).status == 200
    fills = client.app[PIPELINE].fills
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
    assert fills.waiting() == {} and fills.held == 0


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
    client = await make_client(make_settings(cube={"fill_queue_bytes": len(raw) * 3 // 2}))

    async def one(limit: int) -> tuple[int, str | None]:
        resp = await client.post(LOAD.format(1), json={"query": long_query(limit)}, headers=REPORTER)
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")

    answers = sorted(await asyncio.gather(*(one(50_000 - i) for i in range(3))))
    assert answers == [(200, None), (503, "1"), (503, "1")]
    assert client.app[PIPELINE].fills.held == 0


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
