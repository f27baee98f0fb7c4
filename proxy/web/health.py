"""Liveness and readiness routes for load balancers and orchestrators, and a loopback-only runtime view."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import sys

from aiohttp import web

from proxy.web.keys import PIPELINE


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    """200 while the proxy can serve; 503 from SIGTERM on, or when every Cube is down (each named in the body)."""
    ready, report = await request.app[PIPELINE].readiness_report()
    return web.json_response(report, status=200 if ready else 503)


def from_loopback(request: web.Request) -> bool:
    """Whether the socket's peer is a loopback address (never what a header claims)."""
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        return False


async def runtime(request: web.Request) -> web.Response:
    """This worker's process id, asyncio tasks, Cube connections and live Python objects, to loopback callers
    only (404 to others); ``?collect=1`` runs a full garbage collection first, so what is left is what is held.

    What ``make soak`` watches for leaks; no setting, secret or caller data is in it.
    """
    if not from_loopback(request):
        raise web.HTTPNotFound()
    if request.query.get("collect") == "1":
        gc.collect()
    pools = request.app[PIPELINE].cube_http.pools()
    return web.json_response(
        {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "python_blocks": sys.getallocatedblocks(),
            "cube_connections": {
                "open": sum(pool.open_connections for pool in pools),
                "idle": sum(pool.idle_connections for pool in pools),
            },
        }
    )


def setup_health(app: web.Application) -> None:
    app.router.add_get("/-/liveness", liveness, name="health.liveness")
    app.router.add_get("/-/readiness", readiness, name="health.readiness")
    app.router.add_get("/-/runtime", runtime, name="health.runtime")
