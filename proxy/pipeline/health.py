"""What the probes, the metrics and the status page read of one process: readiness, gauges, counters."""

from __future__ import annotations

from typing import Any

from proxy.caching.singleflight import SingleFlightCache
from proxy.observe.families import (
    ANSWER_CACHE_BYTES,
    ANSWER_CACHE_EVICTIONS,
    COALESCED_WAITING,
    CONNECTIONS,
    LANE,
    POOL,
    POOL_WAITING,
    SHARED_DEGRADED,
    SHARED_REFUSED,
    counted,
    gauge_key,
)
from proxy.pipeline.services import Services
from proxy.urls import redact_url


class Health:
    """This process's readiness (and draining), its gauges and the counters kept outside ``Metrics``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        ttl = services.settings.cube.readiness_ttl
        #: GitLab's and Redis' reachability for readiness, each asked at most once per ``readiness_ttl``
        self._gitlab_up: SingleFlightCache[str, bool] = SingleFlightCache(1, ttl)
        self._shared_up: SingleFlightCache[str, bool] = SingleFlightCache(1, ttl)
        #: shutting down: readiness says so from SIGTERM on, while requests are still served
        self.draining = False

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this proxy can serve, and why: not while shutting down, nor while every Cube is down (one
        tenant's Cube down is not an outage of the others), nor (``[gitlab] ready_check``) while GitLab is. The
        report names no Cube (how many are up and down): it is the public probe's body."""
        if self.draining:
            return False, {"status": "shutting down"}
        services = self._services
        cubes = await services.readiness.check()
        # counts only: the probe is public, and a Cube's host and path are for the protected status page
        up = sum(cubes.values())
        report: dict[str, Any] = {"cubes": {"up": up, "down": len(cubes) - up}}
        ready = any(cubes.values())
        gitlab = services.gitlab
        if services.settings.gitlab.ready_check and gitlab is not None:
            gitlab_up, _ = await self._gitlab_up.get("gitlab", gitlab.reachable)
            report["gitlab"] = "up" if gitlab_up else "down"
            ready = ready and gitlab_up
        if services.shared is not None:
            shared_up, _ = await self._shared_up.get("redis", services.shared.ping)
            report["shared"] = "ok" if shared_up else "degraded"  # local caches serve meanwhile: not an outage
        report["status"] = "ready" if ready else "unavailable"
        return ready, report

    def gauges(self) -> dict[str, float]:
        """This process's gauges for a metrics snapshot: Cube pool connections and waiting callers, callers
        waiting on a coalesced call, Redis' state, and the client connections open on each front door."""
        services = self._services
        pools = services.cube_http.pools()
        found: dict[str, float] = {
            gauge_key(POOL, "open"): sum(pool.open_connections for pool in pools),
            gauge_key(POOL, "idle"): sum(pool.idle_connections for pool in pools),
            POOL_WAITING.key: sum(pool.waiting for pool in pools),
            COALESCED_WAITING.key: services.coalescer.waiting(),
            ANSWER_CACHE_BYTES.key: services.cached_queries.cache.bytes,
        }
        if services.shared is not None:
            found[SHARED_DEGRADED.key] = 1 if services.shared.degraded else 0
        if services.settings.server.fast_lane:
            found[gauge_key(CONNECTIONS, "lane")] = services.lane_counts.open
        found[gauge_key(CONNECTIONS, "aiohttp")] = services.aiohttp_counts.open
        return found

    async def cubes(self) -> list[dict[str, Any]]:
        """Each Cube as the status page shows it: its URL (raw: the caller redacts what it shows), whether its
        ``/readyz`` answers, and its connection pool (open, idle, waiting callers)."""
        pools = {pool.origin: pool for pool in self._services.cube_http.pools()}
        found = []
        for url, up in (await self._services.readiness.check()).items():
            origin = next((o for o in pools if url.startswith(f"{o.scheme}://{o.host}")), None)
            pool = pools.get(origin) if origin is not None else None
            found.append(
                {
                    "url": url,
                    "ready": up,
                    "pool": {
                        "open": pool.open_connections if pool else 0,
                        "idle": pool.idle_connections if pool else 0,
                        "waiting": pool.waiting if pool else 0,
                    },
                }
            )
        return found

    def cube_connections(self) -> dict[str, int]:
        """This process's connections to every Cube, open and idle."""
        pools = self._services.cube_http.pools()
        return {"open": sum(p.open_connections for p in pools), "idle": sum(p.idle_connections for p in pools)}

    def queued(self) -> dict[str, int]:
        """Callers waiting for a tenant's slot, by app id."""
        return self._services.tenant_cap.queued()

    def cube_up(self) -> dict[str, int]:
        """Each Cube, as shown, and whether the last readiness check found it up."""
        return {redact_url(url): int(up) for url, up in self._services.readiness.last.items()}

    def counters(self) -> dict[str, list[list[Any]]]:
        """This process's counters kept outside ``Metrics`` (the lane's, the shared layer's), as snapshot rows:
        summed over every worker, a dead one's included, like every other counter."""
        services = self._services
        found: dict[str, list[list[Any]]] = {}
        if services.settings.server.fast_lane:
            lane = services.lane_counts
            found[LANE.key] = counted((("served", lane.served), ("handed_over", lane.handed_over)))
        if services.shared is not None:
            found[SHARED_REFUSED.key] = [[services.shared.tampered]]
        found[ANSWER_CACHE_EVICTIONS.key] = [[services.cached_queries.cache.evictions]]
        return found
