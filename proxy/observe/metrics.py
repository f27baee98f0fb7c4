"""What the proxy counts, per process: plain tallies on the hot path, snapshotted for exposition.

Rules it keeps:
- recording is a dictionary increment or two (no lock, no system call, no allocation per
  request beyond a tuple key): the tallies are turned into Prometheus' form only when
  scraped (``proxy/observe/exposition.py``), and, with several workers, written to a file
  of their own once a second for the scraping worker to add up (``proxy/observe/store.py``);
- every label set is bounded: routes are templates (never raw paths), statuses HTTP
  codes, endpoints and outcomes fixed words; projects only up to ``max_projects``
  distinct ids, the rest counted as ``other``.
"""

from __future__ import annotations

import bisect
import os
import time
from typing import Any

from proxy.observe.families import (
    ANSWER_CACHE,
    AUTH_CACHE,
    BYTES_SENT,
    CONTINUE_WAIT_ROUNDS,
    CUBE_BY_URL,
    CUBE_CALLS,
    CUBE_LATENCY,
    GITLAB_CALLS,
    GITLAB_LATENCY,
    IN_FLIGHT,
    LAG_BUCKETS,
    LATENCY,
    LATENCY_BUCKETS,
    LOOP_LAG,
    META_CACHE,
    OTHER_PROJECT,
    QUERY_CALLERS,
    REDIS_CALLS,
    REDIS_LATENCY,
    REFUSED,
    REQUESTS,
    TENANT_CAP_WAITS,
    TRACE_SPANS,
    counted,
)
from proxy.observe.tracing import SpanCounts

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Timed:
    """Counts per latency bucket (not cumulative; the last is above every bound), their sum, and counts by kind.

    One per route (kinds: (method, status); plus bytes sent) or per Cube endpoint (kinds:
    outcomes): a request's numbers are one dictionary lookup and a few additions.
    """

    __slots__ = ("counts", "kinds", "sent", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.sent = 0
        self.kinds: dict[Any, int] = {}

    def rows(self, label: str) -> list[Any]:
        return [label, self.counts, self.total]


class ProjectTally:
    """One tenant's numbers for the status page: requests, errors, in flight, shared calls, meta cache."""

    __slots__ = ("coalesced", "errors", "in_flight", "meta_hits", "meta_misses", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.in_flight = 0
        self.coalesced = 0
        self.meta_hits = 0
        self.meta_misses = 0


def _timed(table: dict[str, Timed], key: str) -> Timed:
    timed = table.get(key)
    if timed is None:
        timed = table[key] = Timed()
    return timed


class Metrics:
    """This process's tallies; one per pipeline. Counters a step bumps itself are plain attributes."""

    def __init__(self, project_label: bool = False, max_projects: int = 100) -> None:
        #: expose the project id as a label (off by default: a label per tenant is a series per tenant)
        self.project_label = project_label
        self.max_projects = max_projects
        self.started = time.time()
        #: by route template, then by status class (the index: 2 for 2xx...): latency, bytes sent, and counts by
        #: (method, status); a list indexed by class costs the hot path no tuple key
        self.routes: dict[str, list[Timed | None]] = {}
        #: requests begun and not finished (the pipeline's begin adds, finish takes away)
        self.in_flight = 0
        #: by Cube endpoint and the Cube's configured base URL: latency and counts by outcome
        self.cube: dict[tuple[str, str], Timed] = {}
        #: load and dry-run callers that made their upstream call, and those that shared one in flight
        self.own_calls = 0
        self.shared_calls = 0
        self.meta_hits = 0
        self.meta_misses = 0
        #: load and dry-run answers by the answer cache's say: HIT, STALE, MISS, BYPASS
        self.answer_results: dict[str, int] = {}
        #: authorisations answered from the cached grant, and those worked out
        self.auth_hits = 0
        self.auth_misses = 0
        #: by GitLab endpoint: latency and counts by GitLab's status ("unreachable" when it did not answer)
        self.gitlab: dict[str, Timed] = {}
        #: requests refused before any work: "rate_limited" (429), "shed" (503), "new_credentials" (503)
        self.refused: dict[str, int] = {}
        self.tenant_cap_waits = 0
        #: by project id (int), and OTHER_PROJECT once ``max_projects`` ids are counted
        self.projects: dict[int | str, ProjectTally] = {}
        #: how late the event loop ran, sampled (``LAG_BUCKETS``)
        self.loop_lag = [0] * (len(LAG_BUCKETS) + 1)
        self.loop_lag_total = 0.0
        #: Redis calls of the shared layer: latency, and counts by outcome ("ok" or the error's kind)
        self.redis = Timed()
        #: with [tracing]: spans sent to the collector, dropped at a full queue, or not sent by a failed export
        self.trace_spans = SpanCounts()

    # -- recording (the hot path) ---------------------------------------------------------------

    def answer_cache(self, status: str) -> None:
        """One load or dry-run answered with the answer cache's ``status`` (HIT, STALE, MISS, BYPASS)."""
        results = self.answer_results
        results[status] = results.get(status, 0) + 1

    def request_finished(self, route: str, method: str, status: int, seconds: float, sent: int) -> None:
        self.in_flight -= 1
        row = self.routes.get(route)
        if row is None:
            row = self.routes[route] = [None] * 7
        cls = status // 100 if 0 < status < 600 else 6
        timed = row[cls]
        if timed is None:
            timed = row[cls] = Timed()
        timed.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timed.total += seconds
        timed.sent += sent
        kinds = timed.kinds
        key = (method, status)
        kinds[key] = kinds.get(key, 0) + 1

    def project(self, project_id: int) -> ProjectTally:
        """The tally of a project, or of ``other`` once ``max_projects`` distinct ones are counted."""
        tally = self.projects.get(project_id)
        if tally is None:
            key: int | str = project_id
            if len(self.projects) >= self.max_projects:
                key = OTHER_PROJECT
                tally = self.projects.get(key)
            if tally is None:
                tally = self.projects[key] = ProjectTally()
        return tally

    def cube_call(self, endpoint: str, outcome: str, seconds: float, cube_url: str = "") -> None:
        key = (endpoint, cube_url)
        timed = self.cube.get(key)
        if timed is None:
            timed = self.cube[key] = Timed()
        timed.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timed.total += seconds
        kinds = timed.kinds
        kinds[outcome] = kinds.get(outcome, 0) + 1

    def gitlab_call(self, endpoint: str, status: str, seconds: float) -> None:
        timed = _timed(self.gitlab, endpoint)
        timed.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timed.total += seconds
        timed.kinds[status] = timed.kinds.get(status, 0) + 1

    def loop_late(self, seconds: float) -> None:
        self.loop_lag[bisect.bisect_left(LAG_BUCKETS, seconds)] += 1
        self.loop_lag_total += seconds

    def redis_call(self, outcome: str, seconds: float) -> None:
        timed = self.redis
        timed.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timed.total += seconds
        timed.kinds[outcome] = timed.kinds.get(outcome, 0) + 1

    def refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def tenant_cap_wait(self) -> None:
        self.tenant_cap_waits += 1

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(
        self, gauges: dict[str, float] | None = None, counters: dict[str, list[list[Any]]] | None = None
    ) -> dict[str, Any]:
        """Everything counted so far, as JSON-ready rows (what a worker writes for the others to add up);
        ``counters``: more counter rows, kept elsewhere (summed like these)."""
        routes = [((route, cls), t) for route, row in self.routes.items() for cls, t in enumerate(row) if t is not None]
        gitlab = self.gitlab.items()
        by_endpoint: dict[str, Timed] = {}
        by_url: dict[str, Timed] = {}
        for (endpoint, url), timed in self.cube.items():
            for table, key in ((by_endpoint, endpoint), (by_url, url)):
                total = _timed(table, key)
                total.counts = [a + b for a, b in zip(total.counts, timed.counts, strict=True)]
                total.total += timed.total
                for kind, n in timed.kinds.items():
                    total.kinds[kind] = total.kinds.get(kind, 0) + n
        cube = by_endpoint.items()
        redis, spans = self.redis, self.trace_spans
        return {
            "pid": os.getpid(),
            "started": self.started,
            REQUESTS.key: [[route, *key, n] for (route, _), t in routes for key, n in t.kinds.items()],
            LATENCY.key: [
                [route, _CLASSES[cls - 1] if 1 <= cls <= 5 else "other", t.counts, t.total]
                for (route, cls), t in routes
            ],
            BYTES_SENT.key: [[route, t.sent] for (route, _), t in routes],
            CUBE_CALLS.key: [[endpoint, outcome, n] for endpoint, t in cube for outcome, n in t.kinds.items()],
            CUBE_LATENCY.key: [t.rows(endpoint) for endpoint, t in cube],
            CUBE_BY_URL.key: [t.rows(url) for url, t in by_url.items()],
            CONTINUE_WAIT_ROUNDS.key: [
                [endpoint, t.kinds["continue_wait"]] for endpoint, t in cube if "continue_wait" in t.kinds
            ],
            QUERY_CALLERS.key: counted((("own", self.own_calls), ("shared", self.shared_calls))),
            META_CACHE.key: counted((("hit", self.meta_hits), ("miss", self.meta_misses))),
            ANSWER_CACHE.key: counted((status.lower(), n) for status, n in self.answer_results.items()),
            GITLAB_CALLS.key: [[endpoint, status, n] for endpoint, t in gitlab for status, n in t.kinds.items()],
            GITLAB_LATENCY.key: [t.rows(endpoint) for endpoint, t in gitlab],
            AUTH_CACHE.key: counted((("hit", self.auth_hits), ("miss", self.auth_misses))),
            REFUSED.key: counted(self.refused.items()),
            TENANT_CAP_WAITS.key: [[self.tenant_cap_waits]],
            LOOP_LAG.key: [[self.loop_lag, self.loop_lag_total]],
            REDIS_LATENCY.key: [[redis.counts, redis.total]] if redis.kinds else [],
            REDIS_CALLS.key: counted(redis.kinds.items()),
            TRACE_SPANS.key: counted((("sent", spans.sent), ("dropped", spans.dropped), ("unsent", spans.unsent))),
            "projects": [
                [str(key), t.requests, t.errors, t.in_flight, t.coalesced, t.meta_hits, t.meta_misses]
                for key, t in self.projects.items()
            ],
            "gauges": {IN_FLIGHT.key: self.in_flight, **(gauges or {})},
            "process": process_stats(),
            **(counters or {}),
        }


class NoMetrics(Metrics):
    """Counts nothing (``[server] metrics = false``): the baseline the benchmark measures the metrics' cost against.

    The plain attribute counters still add up (they cost next to nothing); nothing is exposed.
    """

    def __init__(self) -> None:
        super().__init__(max_projects=1)
        self._nowhere = ProjectTally()

    def request_finished(self, route: str, method: str, status: int, seconds: float, sent: int) -> None:
        self.in_flight -= 1

    def project(self, project_id: int) -> ProjectTally:
        return self._nowhere

    def cube_call(self, endpoint: str, outcome: str, seconds: float, cube_url: str = "") -> None:
        pass

    def gitlab_call(self, endpoint: str, status: str, seconds: float) -> None:
        pass

    def loop_late(self, seconds: float) -> None:
        pass

    def redis_call(self, outcome: str, seconds: float) -> None:
        pass


def process_stats() -> dict[str, float]:
    """This process's CPU seconds, resident memory, open files and start time (Linux's /proc)."""
    times = os.times()
    stats = {"cpu_seconds": times.user + times.system}
    try:
        with open("/proc/self/statm", "rb") as statm:
            stats["resident_bytes"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        stats["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - not Linux
        pass
    return stats
