"""Zero-filled days in load results (spec section 5, "Zero-filled days"). Pure functions.

The work is bounded by the request, whatever it repeats: identical ranges count once, a
range over ``MAX_FILL_DAYS`` is not filled, and a query whose fill could make more than
``MAX_FILL_ROWS`` rows in all (its ranges' days times its ``compareDateRange`` results) is
refused before anything is asked of Cube. Filling is O(rows + days) per result.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from proxy.errors import bad_request
from proxy.settings import CUBE_MAX_LIMIT

#: A range longer than this is not filled (a hostile range must not make millions of rows).
MAX_FILL_DAYS = 3700
#: The most rows one request's zero-fill may add, over all its results: Cube's own row limit.
MAX_FILL_ROWS = CUBE_MAX_LIMIT
_DAY_SUFFIX = "T00:00:00.000"


@dataclass(frozen=True)
class DayRange:
    member: str
    first: dt.date
    last: dt.date


@dataclass(frozen=True)
class FillPlan:
    #: distinct ranges, in the query's order
    ranges: tuple[DayRange, ...]
    measures: tuple[str, ...]
    descending: bool

    @property
    def days(self) -> int:
        """The most rows this plan adds to one result."""
        return sum((r.last - r.first).days + 1 for r in self.ranges)


def _parse_day(value: Any) -> dt.date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _order_pairs(order: Any) -> list[tuple[str, str]]:
    if isinstance(order, dict):
        return [(str(k), str(v)) for k, v in order.items()]
    if isinstance(order, list):
        return [(str(p[0]), str(p[1])) for p in order if isinstance(p, list) and len(p) == 2]
    return []


def fill_plan(query: Any) -> FillPlan | None:
    """What to fill for a load query, or ``None`` when GitLab would fill nothing."""
    if not isinstance(query, dict):
        return None
    measures = query.get("measures")
    filters = query.get("filters")
    if not isinstance(measures, list) or not measures or not isinstance(filters, list):
        return None
    ranges: dict[DayRange, None] = {}  # an ordered set: a range repeated counts once
    for f in filters:
        if not isinstance(f, dict) or f.get("operator") != "inDateRange" or not isinstance(f.get("member"), str):
            continue
        values = f.get("values")
        if not isinstance(values, list) or len(values) != 2:
            continue
        first, last = _parse_day(values[0]), _parse_day(values[1])
        if first is None or last is None or first > last or (last - first).days > MAX_FILL_DAYS:
            continue
        ranges[DayRange(f["member"], first, last)] = None
    if not ranges:
        return None
    plan_ranges = tuple(ranges)
    member = plan_ranges[0].member
    descending = any(
        key in (member, f"{member}.day") and direction.lower() == "desc"
        for key, direction in _order_pairs(query.get("order"))
    )
    plan = FillPlan(plan_ranges, tuple(str(m) for m in measures), descending)
    results = max(1, _compared_ranges(query))
    if plan.days * results > MAX_FILL_ROWS:
        raise bad_request(
            f"the query's date ranges would zero-fill up to {plan.days * results} rows"
            f" ({plan.days} days x {results} results); at most {MAX_FILL_ROWS}: narrow the inDateRange filters"
            " or ask for fewer compareDateRange ranges"
        )
    return plan


def _compared_ranges(query: dict[str, Any]) -> int:
    """How many results Cube answers with: one per ``compareDateRange`` range."""
    dimensions = query.get("timeDimensions")
    if not isinstance(dimensions, list):
        return 1
    counts = [
        len(d["compareDateRange"])
        for d in dimensions
        if isinstance(d, dict) and isinstance(d.get("compareDateRange"), list)
    ]
    return max(counts, default=1)


def _fill_result(plan: FillPlan, result: Any) -> None:
    if not isinstance(result, dict):
        return
    data = result.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return
    present_by_member: dict[str, set[Any]] = {}
    for day_range in plan.ranges:
        member = day_range.member
        day_key = f"{member}.day"
        if day_key not in data[0]:
            continue  # a totalled result, not one row per day
        present = present_by_member.get(member)
        if present is None:  # once per member, not once per range
            present = present_by_member[member] = {row.get(member) for row in data if isinstance(row, dict)}
        zeros = dict.fromkeys(plan.measures, "0")
        day, one = day_range.first, dt.timedelta(days=1)
        while day <= day_range.last:
            stamp = day.isoformat() + _DAY_SUFFIX
            if stamp not in present:
                present.add(stamp)
                data.append({day_key: stamp, member: stamp, **zeros})
            day += one
    sort_key = f"{plan.ranges[0].member}.day"
    if sort_key in data[0]:
        data.sort(key=lambda r: str(r.get(sort_key) or "") if isinstance(r, dict) else "", reverse=plan.descending)


def zero_fill(plan: FillPlan, body: Any) -> Any:
    """Fill every result of a load answer (``results`` of a multi query, or a single one) in place."""
    if isinstance(body, dict):
        results = body.get("results")
        if isinstance(results, list):
            for result in results:
                _fill_result(plan, result)
        else:
            _fill_result(plan, body)
    return body
