"""The application factory: the aiohttp adapter over the pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.pipeline.core import Pipeline
from proxy.pipeline.routes import DRY_RUN, LOAD, META, PREFIXES, analytics_route
from proxy.settings import Settings
from proxy.web.explorer import setup_explorer, setup_templates
from proxy.web.health import setup_health
from proxy.web.keys import PIPELINE
from proxy.web.middlewares import ANALYTICS_PREFIX, MIDDLEWARES, on_prepare
from proxy.web.observability import setup_observability
from proxy.web.openapi import setup_openapi
from proxy.web.views import dry_run, load, meta


def setup_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        tag = "v4" if prefix else "bare"
        app.router.add_post(analytics_route(prefix, LOAD), load, name=f"{ANALYTICS_PREFIX}load.{tag}")
        app.router.add_post(analytics_route(prefix, DRY_RUN), dry_run, name=f"{ANALYTICS_PREFIX}dry_run.{tag}")
        resource = app.router.add_resource(analytics_route(prefix, META), name=f"{ANALYTICS_PREFIX}meta.{tag}")
        resource.add_route("GET", meta)
        resource.add_route("POST", meta)
    setup_health(app)


def _cleanup_ctx(opens: Callable[[], AbstractAsyncContextManager[None]]) -> Callable[[web.Application], Any]:
    """One of the services' contexts as aiohttp's ``cleanup_ctx`` runs it."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with opens():
            yield

    return context


def create_app(settings: Settings, metrics_folder: Path | None = None, slot: int = 0) -> web.Application:
    """The proxy as an aiohttp application; upstream clients open on start-up and close on clean-up.

    ``metrics_folder``: with several workers, the folder their metrics snapshots meet in;
    ``slot``: which worker this is (its process metrics' label).
    """
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.limits.max_body_bytes)
    app.on_response_prepare.append(on_prepare)
    app[PIPELINE] = Pipeline(settings)
    for opens in app[PIPELINE].services.contexts():  # in the services' one order
        app.cleanup_ctx.append(_cleanup_ctx(opens))
    setup_routes(app)
    setup_templates(app)
    setup_explorer(app, settings)
    setup_observability(app, settings, metrics_folder, slot)
    setup_openapi(app)
    return app
