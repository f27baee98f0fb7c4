"""Liveness and readiness routes for load balancers and orchestrators, and a loopback-only runtime view."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import sys
import time
from dataclasses import dataclass

from aiohttp import web

from proxy.web.keys import PIPELINE


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    """200 while the proxy can serve; 503 from SIGTERM on, or when every Cube is down (each named in the body)."""
    ready, report = await request.app[PIPELINE].health.readiness()
    return web.json_response(report, status=200 if ready else 503)


def from_loopback(request: web.Request) -> bool:
    """Whether the socket's peer is a loopback address (never what a header claims)."""
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        return False


#: seconds between two full collections asked for through ``/-/runtime?collect=1`` (each holds the loop)
COLLECT_EVERY = 5.0


@dataclass
class Collections:
    """When this worker last ran a full collection for ``/-/runtime``, and the live blocks it left."""

    at: float = -COLLECT_EVERY
    blocks: int = 0


RUNTIME = web.AppKey("runtime", Collections)


async def runtime(request: web.Request) -> web.Response:
    """This worker's process id, asyncio tasks, Cube connections and live Python objects, to loopback callers
    only (404 to others).

    ``?collect=1`` runs a full garbage collection first, so what is left is what is held; a
    collection holds the event loop (a large heap: half a second), so one runs at most every
    ``COLLECT_EVERY`` seconds, and a call in between is answered with the blocks the last one
    left (``collected`` false, ``collected_seconds_ago`` its age). What ``make soak`` watches
    for leaks; no setting, secret or caller data is in it.
    """
    if not from_loopback(request):
        raise web.HTTPNotFound()
    blocks = sys.getallocatedblocks()
    collected: dict[str, object] = {}
    if request.query.get("collect") == "1":
        last = request.app[RUNTIME]
        now = time.monotonic()
        ran = now - last.at >= COLLECT_EVERY
        if ran:
            gc.collect()
            last.at, last.blocks = now, sys.getallocatedblocks()
        blocks = last.blocks
        collected = {"collected": ran, "collected_seconds_ago": round(now - last.at, 3)}
    return web.json_response(
        {
            **collected,
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "python_blocks": blocks,
            "cube_connections": request.app[PIPELINE].health.cube_connections(),
        }
    )


def setup_health(app: web.Application) -> None:
    app[RUNTIME] = Collections()
    app.router.add_get("/-/liveness", liveness, name="health.liveness")
    app.router.add_get("/-/readiness", readiness, name="health.readiness")
    app.router.add_get("/-/runtime", runtime, name="health.runtime")
