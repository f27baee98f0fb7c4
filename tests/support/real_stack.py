"""Calls through the proxy to the real stack: a load, a fresh slow query, a zero-fill checked against Cube's rows."""

from __future__ import annotations

import datetime as dt
import uuid

from tests.conftest import REPORTER
from tests.stack.conftest import direct

BASE = "/api/v4/projects/{}/product_analytics/request/{}"


BY_EVENT = {
    "measures": ["TrackedEvents.count"],
    "dimensions": ["TrackedEvents.eventName"],
    "order": {"TrackedEvents.eventName": "asc"},
}


def fresh_slow_query() -> dict[str, object]:
    label = f"t-{uuid.uuid4().hex}"  # a fresh filter value misses Cube's result cache
    return {
        "measures": ["SlowQueries.count"],
        "filters": [{"member": "SlowQueries.label", "operator": "equals", "values": [label]}],
    }


async def load(proxy, project, query, headers=REPORTER, **kwargs):
    resp = await proxy.post(BASE.format(project, "load"), json={"query": query}, headers={**headers, **kwargs})
    return resp.status, await resp.json()


async def zero_filled_in_order(stack, proxy, project: int, cube_url: str | None = None) -> None:
    """Two weeks by day, newest first, through the proxy: every day of the range in order, each day Cube counted
    with Cube's count and every other "0" (Cube itself leaves the empty days out). On either store."""
    today = dt.date.today()
    start = today - dt.timedelta(days=13)
    member = "TrackedEvents.derivedTstamp"
    query = {
        "measures": ["TrackedEvents.count"],
        "timeDimensions": [{"dimension": member, "granularity": "day"}],
        "filters": [{"member": member, "operator": "inDateRange", "values": [start.isoformat(), today.isoformat()]}],
        "order": {member: "desc"},
    }
    status, through = await load(proxy, project, query)
    assert status == 200, through
    _, straight = await direct(stack, project, "load", query, cube_url)
    days = [r[f"{member}.day"] for r in through["results"][0]["data"]]
    expected = [(today - dt.timedelta(days=n)).strftime("%Y-%m-%dT00:00:00.000") for n in range(14)]
    assert days == expected  # every day of the range, newest first
    by_day = {r[f"{member}.day"]: r for r in straight["results"][0]["data"]}
    assert 0 < len(by_day) < 14  # Cube's rows leave the empty days out, in Cube's own day format
    for row in through["results"][0]["data"]:
        day = row[f"{member}.day"]
        assert row["TrackedEvents.count"] == (by_day[day]["TrackedEvents.count"] if day in by_day else "0")
