"""Liveness and readiness routes for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from proxy.web.keys import PIPELINE


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    """Ready only when every configured Cube answers ``/readyz`` with 200 (probed at most once a second)."""
    results = await request.app[PIPELINE].readiness.check()
    ok = bool(results) and all(results.values())
    return web.json_response(
        {"status": "ready" if ok else "unavailable", "cubes": len(results), "ready": sum(results.values())},
        status=200 if ok else 503,
    )


def setup_health(app: web.Application) -> None:
    app.router.add_get("/-/liveness", liveness, name="health.liveness")
    app.router.add_get("/-/readiness", readiness, name="health.readiness")
