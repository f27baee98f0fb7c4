"""The services the request steps use, one set per process: made together, opened and closed in order.

Everything is made in ``Services.__init__``; what needs the running loop or a peer opens in
the contexts ``Services.contexts`` lists, in the one order the web adapter runs them as
``cleanup_ctx`` (and closes them in reverse).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import yarl

from proxy import __version__
from proxy.auth.authorizer import Authorizer, GitLabAuthorizer
from proxy.auth.dev_tokens import DevTokenAuthorizer, load_dev_tokens
from proxy.auth.gitlab import GitLabClient, gitlab_client
from proxy.background import in_background
from proxy.caching.answer_cache import AnswerCache
from proxy.caching.cached_queries import CachedQueries
from proxy.caching.coalesce import Coalescer
from proxy.caching.singleflight import SingleFlightCache
from proxy.cube.client import Buffered, CubeClient
from proxy.cube.fill_queue import FillProcess, FillQueue
from proxy.cube.forward import Forwarder
from proxy.cube.readiness import CubeReadiness, cube_urls
from proxy.cube.signing import Signer
from proxy.cube.tenants import Tenant, Tenants
from proxy.errors import renewals_limited
from proxy.http_client import HttpClient
from proxy.limits.body_budget import BodyBudget
from proxy.limits.byte_budget import ByteBudget
from proxy.limits.caller_rate import RateLimiter
from proxy.limits.overload import LoadShedder
from proxy.limits.tenant_cap import TenantLimiter
from proxy.observe.families import LAG_SAMPLE_SECONDS
from proxy.observe.metrics import Metrics, NoMetrics
from proxy.observe.tracing import Tracing
from proxy.pipeline.access_log import AccessLog
from proxy.pipeline.answers import kept_answer, plain_body
from proxy.pipeline.door_counts import DoorCounts
from proxy.pipeline.request_id import RequestIds
from proxy.settings import Settings
from proxy.shared.codecs import MetaCodec
from proxy.shared.connect import open_shared
from proxy.shared.layer import SharedLayer

#: seconds between two sweeps of the caches' expired entries
SWEEP_SECONDS = 1.0
#: seconds a fill under way may take to finish at shutdown before its process is ended
FILL_GRACE_SECONDS = 2.0
#: projects whose renewQuery rate each process remembers (the least recently renewing forgotten first)
RENEWING_PROJECTS = 10_000


class Services:
    """Caches, clients, limits and counters of one process; see the module for the order they open in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        server, cube, limits = settings.server, settings.cube, settings.limits
        #: every count the metrics and the status page show (this process's)
        self.metrics = (
            Metrics(server.metrics_project_label, server.metrics_max_projects) if server.metrics else NoMetrics()
        )
        #: the tracer with ``[tracing] enabled`` (its export thread starts in ``open_tracing``), else None
        self.tracing = (
            Tracing(settings.tracing, self.metrics.trace_spans, __version__) if settings.tracing.enabled else None
        )
        #: what each front door counts (requests it served, connections open on it), handed to the door
        self.lane_counts = DoorCounts()
        self.aiohttp_counts = DoorCounts()
        self.tenants = Tenants(settings)
        self.request_ids = RequestIds()
        self.access_log = AccessLog(server.log_format)
        self.signer = Signer(_issuer(settings), settings.product_analytics.jwt_ttl)
        self.coalescer = Coalescer()
        self.meta_cache: SingleFlightCache[Tenant, Buffered] = SingleFlightCache(
            cube.meta_cache_size, cube.meta_cache_ttl, size_of=_answer_size, max_bytes=cube.meta_cache_bytes
        )
        self.rate_limiter = RateLimiter(limits.rate_limit, limits.rate_limit_burst, limits.rate_limit_callers)
        #: renewQuery calls per project (the most recent RENEWING_PROJECTS projects remembered)
        self.renewals = RateLimiter(cube.renewals_per_second, cube.renewals_burst, RENEWING_PROJECTS)
        self.shedder = LoadShedder(server.shed_lag_ms / 1000)
        self.body_budget = BodyBudget(limits.bodies_in_flight_bytes, limits.bodies_in_flight_per_client_bytes)
        # no cookies, no redirects, no decompression: the client only speaks what Cube's API needs
        self.cube_http = HttpClient(
            limit=cube.pool_size, connect_timeout=cube.connect_timeout, pool_timeout=cube.queue_timeout
        )
        # large zero-fills are parsed, filled and serialised in a process of their own, a turn per tenant
        self.fill_process = FillProcess()
        self.fills = FillQueue(self.fill_process)
        #: bytes of answers read whole (meta, zero-fills) held at once, from their first byte until done
        self.whole_answers = ByteBudget(
            cube.whole_answers_bytes, "Too many large answers are being read or filled at once; retry shortly"
        )
        self.tenant_cap = TenantLimiter(
            cube.max_concurrent_per_tenant, cube.queue_timeout, self.metrics.tenant_cap_wait
        )
        self.forwarder = Forwarder(
            CubeClient(self.cube_http, cube.read_timeout, cube.buffer_limit, cube.max_whole_bytes, self.whole_answers),
            self.tenant_cap,
            cube.continue_wait_budget,
            cube.continue_wait_pause,
            self.fills,
            metrics=self.metrics,
        )
        self.readiness = CubeReadiness(cube_urls(settings), cube.readiness_ttl)
        #: load and dry-run answers reused per tenant (off for tenants whose answer_ttl is 0)
        self.cached_queries = CachedQueries(
            AnswerCache(
                cube.answer_cache_bytes,
                min(cube.answer_max_bytes, cube.buffer_limit),
                tenant_share=cube.answer_cache_tenant_share,
            ),
            self.metrics,
            cube.answer_shared_max_bytes,
            cube.answer_shared_tenant_bytes,
        )
        #: the fleet's shared layer, when ``[redis] url`` is set (opened by ``open_redis``)
        self.shared: SharedLayer | None = None
        #: GitLab's REST client, when GitLab authorises (opened by ``open_gitlab``)
        self.gitlab: GitLabClient | None = None
        self._authorizer: Authorizer | None = None

    @property
    def authorizer(self) -> Authorizer:
        """Who may do what: GitLab's answers, or the local stack's dev tokens (open from ``open_gitlab`` on)."""
        assert self._authorizer is not None, "open_gitlab runs before any request"
        return self._authorizer

    @contextlib.asynccontextmanager
    async def open_redis(self) -> AsyncIterator[None]:
        """The fleet's shared layer (``[redis] url``): one connection pool for this process; none without a URL."""
        config = self.settings.redis
        if not config.enabled:
            yield
            return
        self.shared = shared = open_shared(config, self.metrics)
        self.meta_cache.share(shared, "meta", MetaCodec(kept_answer, plain_body), config.local_ttl)
        self.cached_queries.share(shared)
        await shared.ping()  # a first connection before traffic (not required: a failure only logs)
        try:
            yield
        finally:
            await shared.close()

    @contextlib.asynccontextmanager
    async def open_gitlab(self) -> AsyncIterator[None]:
        """The authorizer: GitLab's REST API over one client session, or the local stack's dev tokens."""
        settings = self.settings
        if settings.auth.backend == "dev_tokens":
            tokens = load_dev_tokens(settings.auth.dev_tokens_file)
            self._authorizer = DevTokenAuthorizer(tokens, settings.gitlab.min_access_level)
            yield
            return
        async with gitlab_client(settings.gitlab, self.metrics) as client:
            authorizer = GitLabAuthorizer(client, settings.gitlab, metrics=self.metrics)
            if self.shared is not None:
                authorizer.share(self.shared, settings.redis.local_ttl)
            self._authorizer, self.gitlab = authorizer, client
            yield

    @contextlib.asynccontextmanager
    async def open_cube(self) -> AsyncIterator[None]:
        """The Cube side open for requests; on the way out the fill process, any fan-out and the pools close."""
        try:
            yield
        finally:
            await self.cached_queries.close()
            await self.fill_process.close(FILL_GRACE_SECONDS)
            await self.coalescer.close()
            await self.cube_http.close()
            await self.readiness.close()

    @contextlib.asynccontextmanager
    async def open_tracing(self) -> AsyncIterator[None]:
        """The span export's thread (with ``[tracing]``); on the way out what is queued is sent within the tracing's
        ``export_timeout`` (and never more than ``[server] shutdown_timeout``), whatever the collector does."""
        tracing = self.tracing
        if tracing is None:
            yield
            return
        tracing.open()
        try:
            yield
        finally:
            await tracing.close(min(self.settings.tracing.export_timeout, self.settings.server.shutdown_timeout))

    def contexts(self) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
        """What opens with the application, in the order it opens (it closes in reverse): ``open_tracing`` (the
        span export, first so it closes last: every other service's spans are ended by then), ``overload_probe`` (the
        shedder's clock), ``open_redis`` (the shared layer, before the caches that share through it),
        ``open_cube`` (the Cube pool, the fill process and any fan-out), ``open_gitlab`` (the authorizer, sharing
        through Redis) and ``housekeeping`` (the sweeps)."""
        return [
            self.open_tracing,
            self.overload_probe,
            self.open_redis,
            self.open_cube,
            self.open_gitlab,
            self.housekeeping,
        ]

    def renewal_allowed(self, tenant: Tenant) -> None:
        """A ``renewQuery`` call of ``tenant``'s within its rate, or 429 (``[cube] renewals_per_second``)."""
        if self.renewals.enabled and (wait := self.renewals.check(tenant.app_id, time.monotonic())) is not None:
            raise renewals_limited(wait, self.settings.cube.renewals_per_second)

    @contextlib.asynccontextmanager
    async def housekeeping(self) -> AsyncIterator[None]:
        """Expired cache entries (GitLab's answers, refusals, meta, answers) dropped every ``SWEEP_SECONDS``, not left
        until the next insertion (a burst of refused callers leaves nothing behind once its TTL is over); and
        the event loop's lateness sampled for the metrics every ``LAG_SAMPLE_SECONDS``."""
        async with in_background(self._sweep()), in_background(self._sample_lag()):
            yield

    async def _sample_lag(self) -> None:
        loop = asyncio.get_running_loop()
        metrics = self.metrics
        while True:
            due = loop.time() + LAG_SAMPLE_SECONDS
            await asyncio.sleep(LAG_SAMPLE_SECONDS)  # the sampling period: how late it wakes is the measure
            metrics.loop_late(max(0.0, loop.time() - due))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)  # the period itself, not a synchronisation
            self.meta_cache.expire()
            self.cached_queries.cache.expire()
            self.authorizer.expire()  # opened before the sweep starts (``create_app``'s order)

    @contextlib.asynccontextmanager
    async def overload_probe(self) -> AsyncIterator[None]:
        async with self.shedder.running():
            yield


def _answer_size(answer: Buffered) -> int:
    return len(answer.body)


def _issuer(settings: Settings) -> str:
    host = yarl.URL(settings.gitlab.url).host
    return host or settings.gitlab.url
