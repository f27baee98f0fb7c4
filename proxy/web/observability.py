"""What an operator sees: ``/-/metrics`` (Prometheus) and ``/-/status`` (a page, or JSON), for every worker at once.

Rules it keeps:
- with several workers, each writes its tallies to the runtime's folder once a second
  (and the one answering a scrape writes its own first), so a scrape adds up every
  worker, and the counts of a worker that died are kept (``proxy/observe/store.py``);
- with ``[server] metrics_port``, ``/-/metrics`` is served on that port only (on ``metrics_host``: loopback
  unless set otherwise; 404
  on the public listener), else publicly (as a scraper expects); ``/-/status`` is for the
  metrics port, loopback callers (when there is no metrics port) and GitLab
  administrators (by token or session): anyone else gets a 404 that tells nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from proxy import __revision__, __version__
from proxy.background import in_background
from proxy.errors import ApiError
from proxy.observe.exposition import CONTENT_TYPE, Exposition
from proxy.observe.families import (
    AUTH_CACHE,
    CUBE_BY_URL,
    GITLAB_CALLS,
    GITLAB_LATENCY,
    IN_FLIGHT,
    REQUESTS,
    Buckets,
    buckets,
    rows,
)
from proxy.observe.store import merge, read_snapshots, write_snapshot
from proxy.pipeline.core import Pipeline
from proxy.settings import Settings, is_loopback, redacted
from proxy.urls import redact_url
from proxy.web.health import from_loopback
from proxy.web.keys import EXCHANGE, PIPELINE

METRICS_PATH = "/-/metrics"
STATUS_PATH = "/-/status"
#: seconds between a worker's snapshots (how stale another worker's counts may be in a scrape)
SNAPSHOT_INTERVAL = 1.0


class Observability:
    """The exposition and, with several workers, the folder their snapshots meet in."""

    def __init__(self, pipeline: Pipeline, settings: Settings, folder: Path | None, slot: int = 0) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.folder = folder
        self.slot = slot
        self.exposition = Exposition(__version__, settings.server.metrics_project_label, __revision__)

    def current(self) -> dict[str, Any]:
        """Every worker's tallies added up (this one's fresh; the others' at most a second old)."""
        mine = self.snapshot()
        if self.folder is None:
            return merge([mine], alive=lambda _: True)
        write_snapshot(self.folder, mine)
        return merge(read_snapshots(self.folder))

    def snapshot(self) -> dict[str, Any]:
        """This worker's tallies now, with its slot."""
        pipeline = self.pipeline
        snapshot = pipeline.metrics.snapshot(pipeline.health.gauges(), pipeline.health.counters())
        return {**snapshot, "slot": self.slot, "cube_up": pipeline.health.cube_up()}

    async def keep_writing(self) -> None:
        assert self.folder is not None
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)  # the period itself, not a synchronisation
            with contextlib.suppress(OSError):
                write_snapshot(self.folder, self.snapshot())


#: the app's observability state (defined beside its class: the keys module cannot import this one)
OBSERVE = web.AppKey("observe", Observability)


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def _on_metrics_port(request: web.Request, settings: Settings) -> bool:
    return settings.server.metrics_port != 0 and _local_port(request) == settings.server.metrics_port


async def metrics_view(request: web.Request) -> web.Response:
    observe = request.app[OBSERVE]
    if observe.settings.server.metrics_port and not _on_metrics_port(request, observe.settings):
        raise web.HTTPNotFound()
    body = observe.exposition.render(observe.current())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _status_allowed(request: web.Request, observe: Observability) -> bool:
    """The metrics port; else a loopback peer (when there is no metrics port); else a GitLab administrator.

    The peer is the socket's own address, never ``X-Forwarded-For`` (a caller writes that).
    """
    settings = observe.settings
    if _on_metrics_port(request, settings) and (is_loopback(settings.server.metrics_host) or from_loopback(request)):
        return True  # the metrics port on loopback, or a loopback caller of one open to the network
    if not settings.server.metrics_port and from_loopback(request):
        return True
    try:
        caller = await observe.pipeline.identify(request[EXCHANGE], request.headers, request.query)
    except ApiError:
        return False
    return caller.is_admin


async def status_view(request: web.Request) -> web.StreamResponse:
    observe = request.app[OBSERVE]
    if not await _status_allowed(request, observe):
        raise web.HTTPNotFound()
    report = await status_report(observe)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(report, headers={"Cache-Control": "no-store"})
    response = aiohttp_jinja2.render_template("status.html.j2", request, {"s": report})
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'self'; frame-ancestors 'none'"
    response.headers["Cache-Control"] = "no-store"
    return response


def _mean_ms(histogram: Buckets | None) -> float | None:
    if histogram is None:
        return None
    calls = sum(histogram.counts)
    return round(histogram.total / calls * 1000, 1) if calls else None


def _failed(outcome: str) -> bool:
    """A GitLab call that gave no usable answer: unreachable, throttled (429), or a 5xx."""
    return outcome in {"unreachable", "429"} or outcome.startswith("5")


def _ratio(hits: float, misses: float) -> float | None:
    return round(hits / (hits + misses), 3) if hits + misses else None


async def status_report(observe: Observability) -> dict[str, Any]:
    """The status page's numbers: the proxy, each Cube, each tenant (capped), GitLab, the effective settings."""
    pipeline = observe.pipeline
    merged = observe.current()
    processes = merged["processes"]
    started = min((p.get("started", time.time()) for p in processes.values()), default=pipeline.metrics.started)
    ready, readiness = await pipeline.health.readiness()
    latency_by_url = {row.labels[0]: row for row in buckets(merged, CUBE_BY_URL)}
    cubes = [
        {
            "url": redact_url(url),
            "ready": cube["ready"],
            "calls": sum(latency_by_url[url].counts) if url in latency_by_url else 0,
            "mean_ms": _mean_ms(latency_by_url.get(url)),
            "pool": cube["pool"],
        }
        for cube in await pipeline.health.cubes()
        for url in (cube["url"],)
    ]
    queued = {app_id.removeprefix("gitlab_project_"): count for app_id, count in pipeline.health.queued().items()}
    tenants = [
        {
            "project": project,
            "requests": requests,
            "errors": errors,
            "in_flight": in_flight,
            "queued": queued.get(project, 0),
            "coalesced": coalesced,
            "meta_cache_hit_ratio": _ratio(hits, misses),
        }
        for project, requests, errors, in_flight, coalesced, hits, misses in merged["projects"]
    ]
    tenants.sort(key=lambda t: (-t["requests"], t["project"]))
    gitlab_calls = rows(merged, GITLAB_CALLS)
    gitlab_latency = buckets(merged, GITLAB_LATENCY)
    gitlab_all = Buckets(
        ("all",),
        [sum(counts) for counts in zip(*(row.counts for row in gitlab_latency), strict=True)],
        sum(row.total for row in gitlab_latency),
    )
    auth = {labels[0]: value for labels, value in rows(merged, AUTH_CACHE)}
    requests_total = sum(row.value for row in rows(merged, REQUESTS))
    return {
        "version": __version__,
        "python": platform.python_version(),
        "uptime_seconds": round(time.time() - started, 1),
        "workers": max(1, len(processes)),
        "ready": ready,
        "readiness": readiness,
        "requests": {"total": requests_total, "in_flight": merged["gauges"].get(IN_FLIGHT.key, 0)},
        "cubes": cubes,
        "tenants": tenants[: observe.settings.server.metrics_max_projects],
        "gitlab": {
            "url": redact_url(observe.settings.gitlab.url),
            "calls": sum(row.value for row in gitlab_calls),
            "failed": sum(
                value for (_, code), value in gitlab_calls if code in {"unreachable", "429"} or code.startswith("5")
            ),
            "mean_ms": _mean_ms(gitlab_all) if gitlab_latency else None,
            "auth_cache": {
                "hits": auth.get("hit", 0),
                "misses": auth.get("miss", 0),
                "hit_ratio": _ratio(auth.get("hit", 0), auth.get("miss", 0)),
            },
        },
        "settings": redacted(observe.settings),
    }


async def _snapshots(app: web.Application) -> AsyncIterator[None]:
    async with in_background(app[OBSERVE].keep_writing()):
        yield


def setup_observability(app: web.Application, settings: Settings, folder: Path | None, slot: int = 0) -> None:
    """``/-/metrics`` and ``/-/status``; with a snapshot folder (several workers), the writer that feeds it."""
    app[OBSERVE] = Observability(app[PIPELINE], settings, folder, slot)
    if not settings.server.metrics:
        return
    app.router.add_get(METRICS_PATH, metrics_view, name="observe.metrics")
    app.router.add_get(STATUS_PATH, status_view, name="observe.status")
    if folder is not None:
        app.cleanup_ctx.append(_snapshots)
