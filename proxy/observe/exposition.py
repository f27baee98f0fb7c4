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

from proxy.observe.metrics import LAG_BUCKETS, LAG_SAMPLE_SECONDS, LATENCY_BUCKETS, OTHER_PROJECT

PREFIX = "pa_proxy_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(name: str, doc: str, labels: list[str], rows: list[list[Any]]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for *values, count in rows:
        family.add_metric([str(v) for v in values], count)
    return family


def _histogram(
    name: str, doc: str, labels: list[str], rows: list[list[Any]], bounds: tuple[float, ...] = LATENCY_BUCKETS
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
    for *values, counts, total in rows:
        cumulative, buckets = 0, []
        for bound, count in zip((*bounds, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([str(v) for v in values], buckets, total)
    return family


def _answer_class(code: str) -> str:
    """GitLab's answer as a class: ``unreachable``, ``429`` (throttled), or ``2xx``/``3xx``/``4xx``/``5xx``."""
    if code in {"unreachable", "429"}:
        return code
    return f"{code[:1]}xx"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


class SnapshotCollector(Collector):
    """Yields every family from one merged snapshot (set before each scrape)."""

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
        yield _counter(
            "requests_total",
            "Requests answered, by route template, method and status code (499: the caller went away first)",
            ["route", "method", "code"],
            s.get("requests", []),
        )
        yield _histogram(
            "request_duration_seconds",
            "Time to answer a request, by route template and status class",
            ["route", "code_class"],
            s.get("latency", []),
        )
        yield _gauge("requests_in_flight", "Requests being answered now", s.get("gauges", {}).get("in_flight", 0))
        yield _counter(
            "response_bytes_total", "Bytes of answer bodies sent, by route template", ["route"], s.get("bytes_sent", [])
        )
        yield _counter(
            "cube_calls_total",
            "Calls to Cube by endpoint and outcome (data, continue_wait, cube_4xx, "
            "cube_5xx, timeout, unreachable, queue_timeout, database_down)",
            ["endpoint", "outcome"],
            s.get("cube_calls", []),
        )
        yield _histogram(
            "cube_call_duration_seconds",
            "Time of one call to Cube, by endpoint",
            ["endpoint"],
            s.get("cube_latency", []),
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
            "answer_cache_total",
            "Load and dry-run answers by the answer cache's say: hit, stale, miss, bypass (none while it is off)",
            ["result"],
            s.get("answer_cache", []),
        )
        yield _counter(
            "answer_cache_evictions_total",
            "Answers the answer cache dropped to make room (its bytes bound)",
            [],
            s.get("answer_cache_evictions", []),
        )
        yield _counter(
            "gitlab_calls_total",
            "Calls to GitLab by endpoint and GitLab's status code ('unreachable' when it did not answer)",
            ["endpoint", "code"],
            s.get("gitlab_calls", []),
        )
        by_class: dict[str, float] = {}
        for _, code, count in s.get("gitlab_calls", []):
            by_class[_answer_class(str(code))] = by_class.get(_answer_class(str(code)), 0) + count
        yield _counter(
            "gitlab_answers_total",
            "GitLab's answers by class: 2xx, 3xx, 4xx, 429 (throttled), 5xx, unreachable",
            ["class"],
            [[name, count] for name, count in sorted(by_class.items())],
        )
        yield _histogram(
            "gitlab_call_duration_seconds",
            "Time of one call to GitLab, by endpoint",
            ["endpoint"],
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
        for state in ("open", "idle"):
            pool.add_metric([state], gauges.get(f"pool_{state}", 0))
        yield pool
        yield _gauge(
            "cube_pool_waiting_callers", "Calls waiting for a connection to Cube", gauges.get("pool_waiting", 0)
        )
        yield _gauge(
            "answer_cache_bytes", "Bytes of answers the answer cache holds", gauges.get("answer_cache_bytes", 0)
        )
        yield _gauge(
            "coalesced_waiting_callers",
            "Callers waiting on another caller's identical Cube call (coalesced, not yet answered)",
            gauges.get("coalesced_waiting", 0),
        )
        connections = GaugeMetricFamily(
            PREFIX + "open_connections", "Client connections open now, by the front door serving them", labels=["door"]
        )
        for door in ("lane", "aiohttp"):
            connections.add_metric([door], gauges.get(f"connections_{door}", 0))
        yield connections
        cube_up = GaugeMetricFamily(
            PREFIX + "cube_up", "1 while a Cube answers /readyz (as the last readiness probe found)", labels=["cube"]
        )
        for url, up in sorted(s.get("cube_up", {}).items()):
            cube_up.add_metric([url], up)
        yield cube_up
        yield _histogram(
            "event_loop_lag_seconds",
            f"How late the event loop ran, sampled every {LAG_SAMPLE_SECONDS:g} s",
            [],
            [row[1:] for row in s.get("loop_lag", [])],
            LAG_BUCKETS,
        )
        yield _counter(
            "reloads_total", "SIGHUP reloads by outcome: ok, refused (invalid settings), failed", ["outcome"],
            s.get("reloads", []),
        )  # fmt: skip
        yield _gauge("last_reload_time_seconds", "When the last reload was asked for, in Unix seconds (0: never)",
                     s.get("last_reload", 0))  # fmt: skip
        yield _counter(
            "worker_restarts_total",
            "Workers replaced by the parent, by cause: killed (a signal), crashed (a status), exited (0)",
            ["cause"],
            s.get("worker_restarts", []),
        )
        yield _counter(
            "lane_requests",
            "Fast lane: requests served, connections handed to aiohttp",
            ["outcome"],
            s.get("lane") or [["served", 0], ["handed_over", 0]],
        )
        yield _counter(
            "trace_spans",
            "With [tracing]: sampled spans sent to the collector, dropped at a full queue, or lost by a failed export",
            ["outcome"],
            s.get("trace_spans", []),
        )
        if "shared_degraded" in gauges:
            yield _gauge(
                "shared_degraded",
                "1 while Redis (the shared layer) fails: local caches serve",
                gauges["shared_degraded"],
            )
            yield _histogram(
                "redis_call_duration_seconds", "Time of one Redis call of the shared layer", [],
                [row[1:] for row in s.get("redis_latency", [])],
            )  # fmt: skip
            yield _counter(
                "redis_calls",
                "Redis calls of the shared layer by outcome: ok, timeout, error",
                ["outcome"],
                s.get("redis_calls", []),
            )
            yield _counter(
                "shared_refused_values",
                "Shared values ignored: a bad signature, another format, or past their expiry",
                [],
                s.get("shared_refused") or [[0]],
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
