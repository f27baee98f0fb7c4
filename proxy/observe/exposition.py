"""The tallies in Prometheus' text format, through ``prometheus-client``'s metric families and writer.

Every family is declared in ``families.py``; this writes each from one merged snapshot
(``store.merge``). ``docs/metrics.md`` lists them (a test holds it to a scrape).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.observe.families import (
    CONNECTIONS,
    COUNTER,
    FAMILIES,
    GITLAB_ANSWERS,
    GITLAB_CALLS,
    HISTOGRAM,
    OTHER_PROJECT,
    RELOADS,
    Buckets,
    Family,
    Row,
    buckets,
    gauge_key,
    rows,
)

PREFIX = "pa_proxy_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(family: Family, found: list[Row]) -> CounterMetricFamily:
    metric = CounterMetricFamily(PREFIX + str(family.name), family.help, labels=list(family.labels))
    for labels, count in found:
        metric.add_metric([str(v) for v in labels], count)
    return metric


def _histogram(family: Family, found: list[Buckets]) -> HistogramMetricFamily:
    metric = HistogramMetricFamily(PREFIX + str(family.name), family.help, labels=list(family.labels))
    for labels, counts, total in found:
        cumulative, cumulated = 0, []
        for bound, count in zip((*family.buckets, float("inf")), counts, strict=True):
            cumulative += count
            cumulated.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        metric.add_metric([str(v) for v in labels], cumulated, total)
    return metric


def _gauge(family: Family, gauges: dict[str, float]) -> GaugeMetricFamily:
    if not family.values:
        return GaugeMetricFamily(PREFIX + str(family.name), family.help, value=gauges.get(family.key, 0))
    metric = GaugeMetricFamily(PREFIX + str(family.name), family.help, labels=list(family.labels))
    for value in family.values:
        metric.add_metric([value], gauges.get(gauge_key(family, value), 0))
    return metric


def _answer_class(code: str) -> str:
    """GitLab's answer as a class: ``unreachable``, ``429`` (throttled), or ``2xx``/``3xx``/``4xx``/``5xx``."""
    if code in {"unreachable", "429"}:
        return code
    return f"{code[:1]}xx"


def _by_class(calls: list[Row]) -> list[Row]:
    by_class: dict[str, float] = {}
    for (_, code), count in calls:
        name = _answer_class(str(code))
        by_class[name] = by_class.get(name, 0) + count
    return [Row((name,), count) for name, count in sorted(by_class.items())]


class SnapshotCollector(Collector):
    """Yields every declared family (``families.FAMILIES``) from one merged snapshot (set before each scrape)."""

    def __init__(self, version: str, project_label: bool, revision: str = "unknown") -> None:
        self.snapshot: dict[str, Any] = {}
        self._version = version
        self._revision = revision
        self._project_label = project_label

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "The proxy's version and revision, and what it runs on",
            labels=["version", "revision", "python", "aiohttp"],
        )
        info.add_metric([self._version, self._revision, platform.python_version(), aiohttp.__version__], 1)
        yield info
        gauges = s.get("gauges", {})
        for family in FAMILIES:
            if family.name is None or (family.when is not None and family.when not in gauges):
                continue
            if family is GITLAB_ANSWERS:
                yield _counter(family, _by_class(rows(s, GITLAB_CALLS)))
            elif family.kind == COUNTER:
                yield _counter(family, rows(s, family))
            elif family.kind == HISTOGRAM:
                yield _histogram(family, buckets(s, family))
            else:
                yield _gauge(family, gauges)
            if family is CONNECTIONS:
                cube_up = GaugeMetricFamily(
                    PREFIX + "cube_up", "1 while a Cube answers /readyz (as the last readiness probe found)",
                    labels=["cube"],
                )  # fmt: skip
                for url, up in sorted(s.get("cube_up", {}).items()):
                    cube_up.add_metric([url], up)
                yield cube_up
            elif family is RELOADS:
                yield GaugeMetricFamily(
                    PREFIX + "last_reload_time_seconds",
                    "When the last reload was asked for, in Unix seconds (0: never)",
                    value=s.get("last_reload", 0),
                )
        if self._project_label:
            projects = CounterMetricFamily(
                PREFIX + "project_requests",
                f"Analytics requests by project (capped; the rest as '{OTHER_PROJECT}') and outcome",
                labels=["project", "outcome"],
            )
            for project, requests, errors, *_ in s.get("projects", []):
                projects.add_metric([project, "ok"], requests - errors)
                projects.add_metric([project, "error"], errors)
            yield projects
        yield from _process_families(s.get("processes", {}))


def _process_families(processes: dict[str, dict[str, float]]) -> Iterator[Metric]:
    for name, key, doc, kind in (
        ("process_cpu_seconds_total", "cpu_seconds", "User and system CPU seconds of a worker", CounterMetricFamily),
        ("process_resident_memory_bytes", "resident_bytes", "Resident memory of a worker", GaugeMetricFamily),
        ("process_open_fds", "open_fds", "Open file descriptors of a worker", GaugeMetricFamily),
        ("process_start_time_seconds", "started", "When a worker started, in Unix seconds", GaugeMetricFamily),
    ):
        family = kind(name.removesuffix("_total"), doc, labels=["slot"])
        for slot, stats in processes.items():
            if key in stats:
                family.add_metric([slot], stats[key])
        yield family


class Exposition:
    """A registry of its own (never prometheus-client's global one) holding the snapshot collector."""

    def __init__(self, version: str, project_label: bool, revision: str = "unknown") -> None:
        self._collector = SnapshotCollector(version, project_label, revision)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)

    def render(self, snapshot: dict[str, Any]) -> bytes:
        self._collector.snapshot = snapshot
        return generate_latest(self._registry)
