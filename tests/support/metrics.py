"""Prometheus' text as the tests read it: samples parsed, a value by name and labels, /-/metrics scraped, and the
families docs/metrics.md documents."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client) -> dict[Any, float]:
    resp = await client.get("/-/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    return samples(await resp.text())


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    found = {}
    for line in DOC.read_text().splitlines():
        if match := _ROW.match(line):
            name, kind, labels = match.groups()
            found[name] = (kind, tuple(sorted(re.findall(r"`([a-z_]+)`", labels))))
    return found


async def scraped(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        assert resp.status == 200
        return samples(await resp.text())


DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


#: a table row: | `name` | type | `label`, `label` or - | meaning |
_ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram|info) \| ([^|]*) \| [^|]+ \|$")
