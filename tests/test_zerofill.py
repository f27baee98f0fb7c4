import asyncio
import contextlib
import copy
import gc

import orjson
import pytest
from aiohttp import web

from proxy.cube.zerofill import MAX_FILL_DAYS, MAX_FILL_ROWS, fill_plan, zero_fill
from proxy.errors import ApiError
from tests.conftest import REPORTER
from tests.fakes.cube import load_answer
from tests.support.queries import M, query

LOAD = "/api/v4/projects/1/product_analytics/request/load"


def day(d):
    return f"2026-11-{d:02d}T00:00:00.000"


def row(d, count):
    return {f"{M}.day": day(d), M: day(d), "TrackedEvents.count": str(count)}


def answer(rows):
    return {"queryType": "regularQuery", "results": [{"query": {}, "data": rows}]}


def test_missing_days_are_filled_in_order():
    plan = fill_plan(query())
    assert plan is not None
    body = zero_fill(plan, answer([row(3, 7), row(1, 2)]))
    assert body["results"][0]["data"] == [
        row(1, 2),
        {f"{M}.day": day(2), M: day(2), "TrackedEvents.count": "0"},
        row(3, 7),
        {f"{M}.day": day(4), M: day(4), "TrackedEvents.count": "0"},
    ]


def test_descending_when_the_query_orders_the_day_descending():
    for order in ({M: "desc"}, [[M, "desc"]]):
        plan = fill_plan(query(order=order))
        data = zero_fill(plan, answer([row(2, 1)]))["results"][0]["data"]
        assert [r[f"{M}.day"] for r in data] == [day(4), day(3), day(2), day(1)]


def test_every_measure_is_zero_and_no_other_keys():
    plan = fill_plan(query(measures=("TrackedEvents.count", "TrackedEvents.uniqueUsersCount")))
    rows = [{**row(1, 3), "TrackedEvents.uniqueUsersCount": "2", "TrackedEvents.eventName": "click"}]
    data = zero_fill(plan, answer(rows))["results"][0]["data"]
    assert data[1] == {f"{M}.day": day(2), M: day(2), "TrackedEvents.count": "0", "TrackedEvents.uniqueUsersCount": "0"}


def test_nothing_filled_without_a_day_dimension_or_data():
    plan = fill_plan(query())
    totalled = answer([{"TrackedEvents.count": "9"}])
    assert zero_fill(plan, copy.deepcopy(totalled)) == totalled
    empty = answer([])
    assert zero_fill(plan, copy.deepcopy(empty)) == empty


def test_single_result_answer_is_filled_too():
    plan = fill_plan(query(start="2026-11-01T00:00:00.000", end="2026-11-02T23:59:59.999"))
    body = zero_fill(plan, {"query": {}, "data": [row(2, 1)]})
    assert [r[M] for r in body["data"]] == [day(1), day(2)]


def test_no_plan_when_gitlab_would_not_fill():
    assert fill_plan({"measures": ["A.count"]}) is None
    assert fill_plan({"filters": query()["filters"]}) is None
    assert fill_plan({**query(), "measures": []}) is None
    assert fill_plan(query(start="nonsense")) is None
    assert fill_plan(query(start="2026-11-05", end="2026-11-01")) is None
    assert fill_plan("not a query") is None
    q = query()
    q["filters"] = [{"member": M, "operator": "equals", "values": ["x"]}, "junk"]
    assert fill_plan(q) is None


def test_hostile_range_is_not_filled():
    assert fill_plan(query(start="0001-01-01", end="9999-12-31")) is None
    start = "2000-01-01"
    import datetime as dt

    end = (dt.date(2000, 1, 1) + dt.timedelta(days=MAX_FILL_DAYS)).isoformat()
    assert fill_plan(query(start=start, end=end)) is not None


@contextlib.asynccontextmanager
async def loop_gaps():
    """The time between the event loop's turns while the block runs (a stall shows as one long gap)."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0)
            now = loop.time()
            gaps.append(now - last)
            last = now

    watching = asyncio.create_task(ticker())
    try:
        yield gaps
    finally:
        done.set()
        await watching


def ten_years(copies=1, compare=0):
    q = query(start="2016-01-01", end="2025-12-31")
    q["filters"] = q["filters"] * copies
    if compare:
        q["timeDimensions"][0]["compareDateRange"] = [["2026-01-01", "2026-01-02"]] * compare
    return q


def test_a_range_repeated_counts_once():
    """1,000 copies of one ten-year range used to fill ranges x days x rows on the event loop."""
    plan = fill_plan(ten_years(copies=1000))
    assert len(plan.ranges) == 1 and plan.days == 3653
    body = zero_fill(plan, answer([row(1, 1)]))
    assert len(body["results"][0]["data"]) == 3653 + 1


def test_a_fill_over_the_row_cap_is_refused_before_cube_is_asked():
    """compareDateRange multiplies the fill by its ranges: 100 of them with a ten-year filter was 365,300 rows."""
    with pytest.raises(ApiError) as refused:
        fill_plan(ten_years(compare=100))
    assert refused.value.status == 400
    assert "at most 50000" in refused.value.body["message"] and "compareDateRange" in refused.value.body["message"]
    assert fill_plan(ten_years(compare=MAX_FILL_ROWS // 3653)).days == 3653  # just under the cap


def test_overlapping_ranges_of_one_member_fill_each_day_once():
    q = query(start="2026-11-01", end="2026-11-03")
    q["filters"].append({"member": M, "operator": "inDateRange", "values": ["2026-11-02", "2026-11-04"]})
    data = zero_fill(fill_plan(q), answer([row(3, 5)]))["results"][0]["data"]
    assert [r[M] for r in data] == [day(1), day(2), day(3), day(4)]


async def test_a_hostile_fill_does_not_hold_the_event_loop(make_settings, make_client, cube):
    """While the proxy fills 1,000 copies of a ten-year range, the event loop keeps turning (it stalled 6 s)."""

    async def thirty_days(call, request):
        rows = [
            {
                f"{M}.day": f"2016-01-{d:02d}T00:00:00.000",
                M: f"2016-01-{d:02d}T00:00:00.000",
                "TrackedEvents.count": "1",
            }
            for d in range(1, 31)
        ]
        return web.json_response(load_answer(call.body["query"], rows))

    cube.behaviour = thirty_days
    client = await make_client(make_settings())
    async with loop_gaps() as gaps:
        resp = await client.post(LOAD, json={"query": ten_years(copies=1000)}, headers=REPORTER)
    assert resp.status == 200
    assert len((await resp.json())["results"][0]["data"]) == 3653
    assert max(gaps) < 1.0, max(gaps)  # a whole second would be a stall, not scheduling noise
    assert len(cube.calls) == 1


async def test_a_fill_over_the_cap_is_a_400_without_a_cube_call(client, cube):
    resp = await client.post(LOAD, json={"query": ten_years(compare=100)}, headers=REPORTER)
    assert resp.status == 400
    assert "at most 50000" in (await resp.json())["message"]
    assert cube.calls == []


@pytest.mark.loop_timing
async def test_a_large_zero_fill_is_parsed_and_filled_off_the_event_loop(make_settings, make_client, cube):
    """Three results of 50,000 day rows (about 33 MB): parsing, filling and serialising them on the loop
    would hold it for as long as the parse itself takes; off the loop, no gap comes near half of that."""
    day_rows = [
        {f"{M}.day": f"2026-11-{d % 28 + 1:02d}T00:00:00.000", M: f"2026-11-{d % 28 + 1:02d}T00:00:00.000"}
        | {"TrackedEvents.count": str(d), "TrackedEvents.eventName": f"event-{d:040d}"}
        for d in range(50_000)
    ]
    raw = orjson.dumps({"queryType": "compareDateRangeQuery", "results": [{"data": day_rows}] * 3})
    del day_rows  # this test's own objects: a collection walking them would stall the loop, not the proxy
    loop = asyncio.get_running_loop()
    started = loop.time()
    orjson.dumps(orjson.loads(raw))  # what the loop used to spend, measured here, in this run
    on_loop = loop.time() - started

    async def big(call, request):
        return web.Response(body=raw, content_type="application/json")

    cube.behaviour = big
    client = await make_client(make_settings())
    await client.post(LOAD, json={"query": query()}, headers=REPORTER)  # the fill process starts (once)
    gc.collect()
    gc.freeze()  # the test process's start-up objects out of the collector's walk, as the server does (tune_gc)
    try:
        async with loop_gaps() as gaps:
            resp = await client.post(LOAD, json={"query": query(end="2026-11-28")}, headers=REPORTER)
            body = await resp.read()
    finally:
        gc.unfreeze()
    assert resp.status == 200 and len(orjson.loads(body)["results"]) == 3
    assert max(gaps) < on_loop / 2, (max(gaps), on_loop)
