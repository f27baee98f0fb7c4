"""Liveness and readiness routes for load balancers and orchestrators."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.http_client import UpstreamError
from proxy.web.keys import PIPELINE

READY_TIMEOUT = 2.0


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def cube_urls(request: web.Request) -> list[str]:
    settings = request.app[PIPELINE].settings
    urls = {settings.product_analytics.cube_api_base_url}
    urls.update(p.cube_api_base_url for p in settings.projects.values())
    return sorted(u.rstrip("/") for u in urls if u)


async def readiness(request: web.Request) -> web.Response:
    """Ready only when every configured Cube answers ``/readyz`` with 200."""
    http = request.app[PIPELINE].cube_http

    async def ready(url: str) -> bool:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                async with await http.request("GET", f"{url}/readyz", {}, None, READY_TIMEOUT) as response:
                    await response.read()
                    return response.status == 200
        except (TimeoutError, UpstreamError, ValueError):
            return False

    urls = cube_urls(request)
    results = await asyncio.gather(*(ready(u) for u in urls))
    cubes = {u: ("ready" if ok else "unavailable") for u, ok in zip(urls, results, strict=True)}
    ok = bool(urls) and all(results)
    return web.json_response(
        {"status": "ready" if ok else "unavailable", "cubes": len(cubes), "ready": sum(results)},
        status=200 if ok else 503,
    )


def setup_health(app: web.Application) -> None:
    app.router.add_get("/-/liveness", liveness, name="health.liveness")
    app.router.add_get("/-/readiness", readiness, name="health.readiness")
