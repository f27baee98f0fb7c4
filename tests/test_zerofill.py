import copy

from proxy.cube.zerofill import MAX_FILL_DAYS, fill_plan, zero_fill

M = "TrackedEvents.derivedTstamp"


def query(order=None, start="2026-11-01", end="2026-11-04", measures=("TrackedEvents.count",)):
    q = {
        "measures": list(measures),
        "timeDimensions": [{"dimension": M, "granularity": "day"}],
        "filters": [{"member": M, "operator": "inDateRange", "values": [start, end]}],
    }
    if order is not None:
        q["order"] = order
    return q


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
