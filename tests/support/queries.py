"""Queries and Cube answers the tests send and fake: a zero-fill's query, large answers, long queries."""

from __future__ import annotations

import orjson

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


def big_answer(rows: int = 40_000) -> bytes:
    data = [
        {f"{M}.day": f"2016-{d % 12 + 1:02d}-{d % 28 + 1:02d}T00:00:00.000", "TrackedEvents.count": str(d)}
        | {"TrackedEvents.eventName": f"event-{d:040d}"}
        for d in range(rows)
    ]
    return orjson.dumps({"queryType": "regularQuery", "results": [{"data": data}]})


def long_query(limit: int) -> dict:
    """Six years by day (GitLab fills an inDateRange filter): over the loop's share, so filled in the fill process."""
    q = query(start="2015-01-01", end="2020-12-31")
    q["limit"] = limit
    return q
