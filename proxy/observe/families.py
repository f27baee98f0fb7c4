"""Every metric family the proxy exposes, declared once: its snapshot key, name, kind, labels and help.

The snapshot (``metrics.py``, ``Health.counters``, the parent's events), the merge of the
workers' snapshots (``store.py``), the exposition (``exposition.py``) and the status page all
go through these declarations, so a family is added here and nowhere else is a list of names
to keep in step: a snapshot key that is not declared is refused by ``store.undeclared`` (and a
test), never silently dropped by the merge.

In a snapshot (JSON, written by each worker), a counter's rows are ``[*labels, value]`` and a
histogram's ``[*labels, counts, sum]`` (counts per bucket, not cumulative, the last above every
bound); in code they are read as ``Row`` and ``Buckets``. Gauges are a live process's own
(``snapshot["gauges"]``), added up over live workers only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

#: seconds: request, Cube, GitLab and Redis latencies
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds the event loop ran late (sampled every ``LAG_SAMPLE_SECONDS``)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_SAMPLE_SECONDS = 0.5
OTHER_PROJECT = "other"

COUNTER, HISTOGRAM, GAUGE = "counter", "histogram", "gauge"


class Family(NamedTuple):
    #: its rows' key in a snapshot (a gauge's: its key in ``gauges``, or the prefix of ``<key>_<value>`` keys)
    key: str
    #: exposed as ``pa_proxy_<name>``; None: kept for the status page only
    name: str | None
    kind: str
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    #: rows exposed while no process has counted any (the series exist from the start)
    zero: tuple[tuple[Any, ...], ...] = ()
    #: exposed only while the merged gauges hold this key (the shared layer's families, with ``[redis]``)
    when: str | None = None
    #: a labelled gauge's label values: its value for ``v`` is the gauge ``<key>_<v>``
    values: tuple[str, ...] = ()


class Row(NamedTuple):
    """A counter's row."""

    labels: tuple[Any, ...]
    value: float


class Buckets(NamedTuple):
    """A histogram's row: counts per bucket (not cumulative) and their sum."""

    labels: tuple[Any, ...]
    counts: list[int]
    total: float


def _counter(key: str, name: str, labels: tuple[str, ...], doc: str, **more: Any) -> Family:
    return Family(key, name, COUNTER, labels, doc, **more)


def _histogram(key: str, name: str | None, labels: tuple[str, ...], doc: str, **more: Any) -> Family:
    return Family(key, name, HISTOGRAM, labels, doc, **more)


def _gauge(key: str, name: str, labels: tuple[str, ...], doc: str, **more: Any) -> Family:
    return Family(key, name, GAUGE, labels, doc, **more)


REQUESTS = _counter(
    "requests", "requests_total", ("route", "method", "code"),
    "Requests answered, by route template, method and status code (499: the caller went away first)",
)  # fmt: skip
LATENCY = _histogram(
    "latency", "request_duration_seconds", ("route", "code_class"),
    "Time to answer a request, by route template and status class",
)  # fmt: skip
IN_FLIGHT = _gauge("in_flight", "requests_in_flight", (), "Requests being answered now")
BYTES_SENT = _counter(
    "bytes_sent", "response_bytes_total", ("route",), "Bytes of answer bodies sent, by route template"
)
CUBE_CALLS = _counter(
    "cube_calls", "cube_calls_total", ("endpoint", "outcome"),
    "Calls to Cube by endpoint and outcome (data, continue_wait, cube_4xx, "
    "cube_5xx, timeout, unreachable, queue_timeout, database_down)",
)  # fmt: skip
CUBE_LATENCY = _histogram(
    "cube_latency", "cube_call_duration_seconds", ("endpoint",), "Time of one call to Cube, by endpoint"
)
CUBE_BY_URL = _histogram(
    "cube_by_url", None, ("cube",), "Time of one call to Cube, by the Cube asked (the status page's)"
)
CONTINUE_WAIT_ROUNDS = _counter(
    "continue_wait_rounds", "cube_continue_wait_rounds_total", ("endpoint",),
    "Cube answers that said Continue wait, by endpoint",
)  # fmt: skip
QUERY_CALLERS = _counter(
    "query_callers", "query_callers_total", ("call",),
    "Load and dry-run callers: 'own' made the upstream call, 'shared' joined an identical one in flight",
)  # fmt: skip
META_CACHE = _counter(
    "meta_cache", "meta_cache_total", ("result",), "Meta answers from the cache (hit) or from Cube (miss)"
)
ANSWER_CACHE = _counter(
    "answer_cache", "answer_cache_total", ("result",),
    "Load and dry-run answers by the answer cache's say: hit, stale, miss, bypass (none while it is off)",
)  # fmt: skip
ANSWER_CACHE_EVICTIONS = _counter(
    "answer_cache_evictions", "answer_cache_evictions_total", (),
    "Answers the answer cache dropped to make room (its bytes bound)",
)  # fmt: skip
GITLAB_CALLS = _counter(
    "gitlab_calls", "gitlab_calls_total", ("endpoint", "code"),
    "Calls to GitLab by endpoint and GitLab's status code ('unreachable' when it did not answer)",
)  # fmt: skip
#: derived from ``GITLAB_CALLS`` at exposition (its key names what it is read from)
GITLAB_ANSWERS = _counter(
    "gitlab_calls", "gitlab_answers_total", ("class",),
    "GitLab's answers by class: 2xx, 3xx, 4xx, 429 (throttled), 5xx, unreachable",
)  # fmt: skip
GITLAB_LATENCY = _histogram(
    "gitlab_latency", "gitlab_call_duration_seconds", ("endpoint",), "Time of one call to GitLab, by endpoint"
)
AUTH_CACHE = _counter(
    "auth_cache", "auth_cache_total", ("result",),
    "Authorisations answered from cached GitLab answers (hit) or not (miss)",
)  # fmt: skip
REFUSED = _counter(
    "refused", "refused_total", ("reason",),
    "Requests refused before any work: rate_limited (429), shed and new_credentials (503)",
)  # fmt: skip
TENANT_CAP_WAITS = _counter("tenant_cap_waits", "tenant_cap_waits", (), "Cube calls that waited for a tenant slot")
POOL = _gauge("pool", "cube_pool_connections", ("state",), "Cube client connections by state", values=("open", "idle"))
POOL_WAITING = _gauge("pool_waiting", "cube_pool_waiting_callers", (), "Calls waiting for a connection to Cube")
ANSWER_CACHE_BYTES = _gauge("answer_cache_bytes", "answer_cache_bytes", (), "Bytes of answers the answer cache holds")
COALESCED_WAITING = _gauge(
    "coalesced_waiting", "coalesced_waiting_callers", (),
    "Callers waiting on another caller's identical Cube call (coalesced, not yet answered)",
)  # fmt: skip
CONNECTIONS = _gauge(
    "connections", "open_connections", ("door",), "Client connections open now, by the front door serving them",
    values=("lane", "aiohttp"),
)  # fmt: skip
LOOP_LAG = _histogram(
    "loop_lag", "event_loop_lag_seconds", (), f"How late the event loop ran, sampled every {LAG_SAMPLE_SECONDS:g} s",
    buckets=LAG_BUCKETS,
)  # fmt: skip
RELOADS = _counter(
    "reloads", "reloads_total", ("outcome",), "SIGHUP reloads by outcome: ok, refused (invalid settings), failed"
)
WORKER_RESTARTS = _counter(
    "worker_restarts", "worker_restarts_total", ("cause",),
    "Workers replaced by the parent, by cause: killed (a signal), crashed (a status), exited (0)",
)  # fmt: skip
LANE = _counter(
    "lane", "lane_requests", ("outcome",), "Fast lane: requests served, connections handed to aiohttp",
    zero=(("served", 0), ("handed_over", 0)),
)  # fmt: skip
TRACE_SPANS = _counter(
    "trace_spans", "trace_spans", ("outcome",),
    "With [tracing]: sampled spans sent to the collector, dropped at a full queue, or lost by a failed export",
)  # fmt: skip
SHARED_DEGRADED = _gauge(
    "shared_degraded", "shared_degraded", (), "1 while Redis (the shared layer) fails: local caches serve",
    when="shared_degraded",
)  # fmt: skip
REDIS_LATENCY = _histogram(
    "redis_latency", "redis_call_duration_seconds", (), "Time of one Redis call of the shared layer",
    when="shared_degraded",
)  # fmt: skip
REDIS_CALLS = _counter(
    "redis_calls", "redis_calls", ("outcome",), "Redis calls of the shared layer by outcome: ok, timeout, error",
    when="shared_degraded",
)  # fmt: skip
SHARED_REFUSED = _counter(
    "shared_refused", "shared_refused_values", (),
    "Shared values ignored: a bad signature, another format, or past their expiry",
    zero=((0,),), when="shared_degraded",
)  # fmt: skip

#: in the order they are exposed (the derived one and the special ones, build info, cube_up, the last reload's
#: time, projects and processes, are placed by the exposition)
FAMILIES: tuple[Family, ...] = (
    REQUESTS, LATENCY, IN_FLIGHT, BYTES_SENT, CUBE_CALLS, CUBE_LATENCY, CUBE_BY_URL, CONTINUE_WAIT_ROUNDS,
    QUERY_CALLERS, META_CACHE, ANSWER_CACHE, ANSWER_CACHE_EVICTIONS, GITLAB_CALLS, GITLAB_ANSWERS, GITLAB_LATENCY,
    AUTH_CACHE, REFUSED, TENANT_CAP_WAITS, POOL, POOL_WAITING, ANSWER_CACHE_BYTES, COALESCED_WAITING, CONNECTIONS,
    LOOP_LAG, RELOADS, WORKER_RESTARTS, LANE, TRACE_SPANS, SHARED_DEGRADED, REDIS_LATENCY, REDIS_CALLS,
    SHARED_REFUSED,
)  # fmt: skip
#: the families whose rows a snapshot holds, by key (GITLAB_ANSWERS is read from GITLAB_CALLS' rows)
COUNTED = {f.key: f for f in FAMILIES if f.kind == COUNTER and f is not GITLAB_ANSWERS}
TIMED = {f.key: f for f in FAMILIES if f.kind == HISTOGRAM}
#: a snapshot's keys that are not families: who wrote it, and what is merged by rules of its own
STRUCTURE = frozenset(
    {"pid", "started", "slot", "folded", "gauges", "process", "processes", "projects", "cube_up", "last_reload"}
)


def rows(snapshot: dict[str, Any], family: Family, zero: bool = True) -> list[Row]:
    """A counter's rows in ``snapshot`` (its ``zero`` rows when it has none, unless ``zero`` is false)."""
    found = snapshot.get(family.key) or (family.zero if zero else ())
    return [Row(tuple(row[:-1]), row[-1]) for row in found]


def buckets(snapshot: dict[str, Any], family: Family) -> list[Buckets]:
    """A histogram's rows in ``snapshot``."""
    return [Buckets(tuple(row[:-2]), row[-2], row[-1]) for row in snapshot.get(family.key, [])]


def counted(pairs: Iterable[tuple[Any, float]]) -> list[list[Any]]:
    """``(label, value)`` pairs as a one-label counter's snapshot rows."""
    return [[label, value] for label, value in pairs]


def gauge_key(family: Family, value: str) -> str:
    """The gauge key of a labelled gauge's ``value`` (one of its declared ``values``)."""
    assert value in family.values, (family.name, value)
    return f"{family.key}_{value}"


def undeclared(snapshot: dict[str, Any]) -> set[str]:
    """The keys of ``snapshot`` no declaration names: a family added to a snapshot but not here."""
    return set(snapshot) - set(COUNTED) - set(TIMED) - STRUCTURE
