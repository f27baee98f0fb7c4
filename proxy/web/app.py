"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import yarl
from aiohttp import web

from proxy.auth.authorizer import Authorizer, GitLabAuthorizer
from proxy.auth.dev_tokens import DevTokenAuthorizer, load_dev_tokens
from proxy.auth.gitlab import GitLabClient
from proxy.cube.client import CubeClient
from proxy.cube.forward import Forwarder
from proxy.cube.signing import Signer
from proxy.cube.tenants import Tenants
from proxy.http_client import HttpClient
from proxy.limits.caller_rate import RateLimiter
from proxy.limits.overload import LoadShedder
from proxy.limits.tenant_cap import TenantLimiter
from proxy.pipeline.access_log import AccessLog
from proxy.pipeline.coalesce import Coalescer
from proxy.pipeline.request_id import RequestIds
from proxy.settings import Settings
from proxy.singleflight import SingleFlightCache
from proxy.web.health import setup_health
from proxy.web.keys import (
    ACCESS_LOG,
    AUTHORIZER,
    COALESCER,
    CUBE_HTTP,
    FORWARDER,
    GITLAB_SESSION,
    META_CACHE,
    RATE_LIMITER,
    REQUEST_IDS,
    SETTINGS,
    SHEDDER,
    SIGNER,
    TENANTS,
)
from proxy.web.middlewares import MIDDLEWARES
from proxy.web.views import dry_run, load, meta

PREFIXES = ("/api/v4", "")


def setup_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        base = f"{prefix}/projects/{{project}}/product_analytics/request"
        tag = "v4" if prefix else "bare"
        app.router.add_post(f"{base}/load", load, name=f"analytics.load.{tag}")
        app.router.add_post(f"{base}/dry-run", dry_run, name=f"analytics.dry_run.{tag}")
        resource = app.router.add_resource(f"{base}/meta", name=f"analytics.meta.{tag}")
        resource.add_route("GET", meta)
        resource.add_route("POST", meta)
    setup_health(app)


def _issuer(settings: Settings) -> str:
    host = yarl.URL(settings.gitlab.url).host
    return host or settings.gitlab.url


async def _cube_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # no cookies, no redirects, no decompression: the client only speaks what Cube's API needs
    http = HttpClient(
        limit=settings.cube.pool_size,
        connect_timeout=settings.cube.connect_timeout,
        pool_timeout=settings.cube.queue_timeout,
    )
    app[CUBE_HTTP] = http
    app[FORWARDER] = Forwarder(
        CubeClient(http, settings.cube.read_timeout, settings.cube.buffer_limit, settings.cube.max_whole_bytes),
        TenantLimiter(settings.cube.max_concurrent_per_tenant, settings.cube.queue_timeout),
        settings.cube.continue_wait_budget,
    )
    yield
    await app[COALESCER].close()
    await http.close()


async def _gitlab_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.auth.backend == "dev_tokens":
        app[AUTHORIZER] = DevTokenAuthorizer(
            load_dev_tokens(settings.auth.dev_tokens_file), settings.gitlab.min_access_level
        )
        yield
        return
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
        cookie_jar=aiohttp.DummyCookieJar(),  # callers share this session: GitLab's cookies must not
    )
    app[GITLAB_SESSION] = session
    client = GitLabClient(session, settings.gitlab.url, settings.gitlab.timeout, settings.gitlab.retry_after)
    authorizer: Authorizer = GitLabAuthorizer(client, settings.gitlab)
    app[AUTHORIZER] = authorizer
    yield
    await session.close()


async def _shedder_ctx(app: web.Application) -> AsyncIterator[None]:
    async with app[SHEDDER].running():
        yield


def create_app(settings: Settings) -> web.Application:
    """The proxy as an aiohttp application; upstream clients open on start-up and close on clean-up."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.limits.max_body_bytes)
    app[SETTINGS] = settings
    app[TENANTS] = Tenants(settings)
    app[REQUEST_IDS] = RequestIds()
    app[ACCESS_LOG] = AccessLog(settings.server.log_format)
    app[SIGNER] = Signer(_issuer(settings), settings.product_analytics.jwt_ttl)
    app[COALESCER] = Coalescer()
    app[META_CACHE] = SingleFlightCache(settings.cube.meta_cache_size, settings.cube.meta_cache_ttl)
    app[RATE_LIMITER] = RateLimiter(
        settings.limits.rate_limit, settings.limits.rate_limit_burst, settings.limits.rate_limit_callers
    )
    app[SHEDDER] = LoadShedder(settings.server.shed_lag_ms / 1000)
    app.cleanup_ctx.append(_shedder_ctx)
    app.cleanup_ctx.append(_cube_ctx)
    app.cleanup_ctx.append(_gitlab_ctx)
    setup_routes(app)
    return app
