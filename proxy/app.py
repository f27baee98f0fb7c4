"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import yarl
from aiohttp import web

from .access_log import AccessLog
from .admission import LoadShedder
from .auth import Authorizer, GitLabAuthorizer
from .coalesce import Coalescer
from .cube import CubeClient
from .dev_tokens import DevTokenAuthorizer, load_dev_tokens
from .forward import Forwarder
from .gitlab import GitLabClient
from .health import setup_health
from .keys import (
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
from .limiter import TenantLimiter
from .middlewares import MIDDLEWARES
from .ratelimit import RateLimiter
from .request_id import RequestIds
from .settings import Settings
from .signing import Signer
from .singleflight import SingleFlightCache
from .tenants import Tenants
from .upstream import HttpClient
from .views import dry_run, load, meta

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
