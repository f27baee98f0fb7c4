"""Zero-filled days in load results (spec section 5, "Zero-filled days"). Pure functions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

#: A range longer than this is not filled (a hostile range must not make millions of rows).
MAX_FILL_DAYS = 3700
_DAY_FORMAT = "%Y-%m-%dT00:00:00.000"


@dataclass(frozen=True)
class DayRange:
    member: str
    first: dt.date
    last: dt.date


@dataclass(frozen=True)
class FillPlan:
    ranges: tuple[DayRange, ...]
    measures: tuple[str, ...]
    descending: bool


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
    ranges: list[DayRange] = []
    for f in filters:
        if not isinstance(f, dict) or f.get("operator") != "inDateRange" or not isinstance(f.get("member"), str):
            continue
        values = f.get("values")
        if not isinstance(values, list) or len(values) != 2:
            continue
        first, last = _parse_day(values[0]), _parse_day(values[1])
        if first is None or last is None or first > last or (last - first).days > MAX_FILL_DAYS:
            continue
        ranges.append(DayRange(f["member"], first, last))
    if not ranges:
        return None
    member = ranges[0].member
    descending = any(
        key in (member, f"{member}.day") and direction.lower() == "desc"
        for key, direction in _order_pairs(query.get("order"))
    )
    return FillPlan(tuple(ranges), tuple(str(m) for m in measures), descending)


def _fill_result(plan: FillPlan, result: Any) -> None:
    if not isinstance(result, dict):
        return
    data = result.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return
    for day_range in plan.ranges:
        day_key = f"{day_range.member}.day"
        if day_key not in data[0]:
            continue  # a totalled result, not one row per day
        present = {row.get(day_range.member) for row in data if isinstance(row, dict)}
        day = day_range.first
        while day <= day_range.last:
            stamp = day.strftime(_DAY_FORMAT)
            if stamp not in present:
                row: dict[str, Any] = {day_key: stamp, day_range.member: stamp}
                row.update(dict.fromkeys(plan.measures, "0"))
                data.append(row)
            day += dt.timedelta(days=1)
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
