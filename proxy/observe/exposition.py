"""The tallies in Prometheus' text format, through ``prometheus-client``'s metric families and writer.

Every name the proxy exposes is made here, from one merged snapshot (``store.merge``): the
README's Operations section lists them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.observe.metrics import LATENCY_BUCKETS, OTHER_PROJECT

PREFIX = "pa_proxy_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(name: str, doc: str, labels: list[str], rows: list[list[Any]]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for *values, count in rows:
        family.add_metric([str(v) for v in values], count)
    return family


def _histogram(name: str, doc: str, label: str, rows: list[list[Any]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, doc, labels=[label])
    for value, counts, total in rows:
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([str(value)], buckets, total)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


class SnapshotCollector(Collector):
    """Yields every family from one merged snapshot (set before each scrape)."""

    def __init__(self, version: str, project_label: bool) -> None:
        self.snapshot: dict[str, Any] = {}
        self._version = version
        self._project_label = project_label

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        info = GaugeMetricFamily(
            PREFIX + "build_info", "The proxy's version and what it runs on", labels=["version", "python", "aiohttp"]
        )
        info.add_metric([self._version, platform.python_version(), aiohttp.__version__], 1)
        yield info
        yield _counter(
            "requests_total",
            "Requests answered, by route template, method and status",
            ["route", "method", "status"],
            s.get("requests", []),
        )
        yield _histogram(
            "request_duration_seconds", "Time to answer a request, by route template", "route", s.get("latency", [])
        )
        yield _gauge("requests_in_flight", "Requests being answered now", s.get("gauges", {}).get("in_flight", 0))
        yield _counter(
            "response_bytes_total", "Bytes of answer bodies sent, by route template", ["route"], s.get("bytes_sent", [])
        )
        yield _counter(
            "cube_calls_total",
            "Calls to Cube by endpoint and outcome (data, continue_wait, cube_4xx, "
            "cube_5xx, timeout, unreachable, queue_timeout)",
            ["endpoint", "outcome"],
            s.get("cube_calls", []),
        )
        yield _histogram(
            "cube_call_duration_seconds", "Time of one call to Cube, by endpoint", "endpoint", s.get("cube_latency", [])
        )
        yield _counter(
            "cube_continue_wait_rounds_total",
            "Cube answers that said Continue wait, by endpoint",
            ["endpoint"],
            s.get("continue_wait_rounds", []),
        )
        yield _counter(
            "query_callers_total",
            "Load and dry-run callers: 'own' made the upstream call, 'shared' joined an identical one in flight",
            ["call"],
            s.get("query_callers", []),
        )
        yield _counter(
            "meta_cache_total",
            "Meta answers from the cache (hit) or from Cube (miss)",
            ["result"],
            s.get("meta_cache", []),
        )
        yield _counter(
            "gitlab_calls_total",
            "Calls to GitLab by endpoint and status",
            ["endpoint", "status"],
            s.get("gitlab_calls", []),
        )
        yield _histogram(
            "gitlab_call_duration_seconds",
            "Time of one call to GitLab, by endpoint",
            "endpoint",
            s.get("gitlab_latency", []),
        )
        yield _counter(
            "auth_cache_total",
            "Authorisations answered from cached GitLab answers (hit) or not (miss)",
            ["result"],
            s.get("auth_cache", []),
        )
        yield _counter(
            "refused_total",
            "Requests refused before any work: rate_limited (429), shed and new_credentials (503)",
            ["reason"],
            s.get("refused", []),
        )
        waits = CounterMetricFamily(PREFIX + "tenant_cap_waits", "Cube calls that waited for a tenant slot")
        waits.add_metric([], s.get("tenant_cap_waits", 0))
        yield waits
        gauges = s.get("gauges", {})
        pool = GaugeMetricFamily(PREFIX + "cube_pool_connections", "Cube client connections by state", labels=["state"])
        for state in ("open", "idle", "waiting"):
            pool.add_metric([state], gauges.get(f"pool_{state}", 0))
        yield pool
        lane = CounterMetricFamily(
            PREFIX + "lane_requests", "Fast lane: requests served, connections handed to aiohttp", labels=["outcome"]
        )
        for outcome in ("served", "handed_over"):
            lane.add_metric([outcome], gauges.get(f"lane_{outcome}", 0))
        yield lane
        if "shared_degraded" in gauges:
            yield _gauge(
                "shared_degraded",
                "1 while Redis (the shared layer) fails: local caches serve",
                gauges["shared_degraded"],
            )
            refused = CounterMetricFamily(PREFIX + "shared_refused_values", "Shared values ignored: bad signature")
            refused.add_metric([], gauges.get("shared_refused_values", 0))
            yield refused
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
        family = kind(name.removesuffix("_total"), doc, labels=["pid"])
        for pid, stats in processes.items():
            if key in stats:
                family.add_metric([pid], stats[key])
        yield family


class Exposition:
    """A registry of its own (never prometheus-client's global one) holding the snapshot collector."""

    def __init__(self, version: str, project_label: bool) -> None:
        self._collector = SnapshotCollector(version, project_label)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)

    def render(self, snapshot: dict[str, Any]) -> bytes:
        self._collector.snapshot = snapshot
        return generate_latest(self._registry)
