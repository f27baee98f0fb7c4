"""The request pipeline: every step of an analytics request, in its order, for both front doors.

A request passes these steps, and both front doors (aiohttp's middlewares and views in
``proxy/web/``, the fast lane in ``proxy/lane/``) call them, in this order, and nothing else:

1. ``begin``: the request id (Cube's form) and the clock; an ``Exchange`` to carry.
2. ``gate`` (analytics routes): admission (503 while the loop lags), then the caller's
   credential (401) within its rate limit (429).
3. ``answer_query`` or ``answer_meta``: body checks, authorisation (GitLab), the tenant,
   signing, coalescing or the meta cache, the tenant slot and the Cube call.
4. The answer: an ``ApiError`` is its status, body and headers; any other error is
   ``fault`` (logged, a plain 500); a stream that fails after its 200 is ``stream_failed``
   (logged, the caller's connection aborted).
5. ``finish``: one access line.

The services (caches, clients, limits) live here, one set per process; the Cube and
GitLab clients open and close in ``open_cube`` and ``open_gitlab``, which the web
adapter runs as ``cleanup_ctx``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ProcessPoolExecutor

import aiohttp
import yarl

from proxy.auth.authorizer import Authorizer, GitLabAuthorizer, Grant
from proxy.auth.credentials import extract_credential
from proxy.auth.dev_tokens import DevTokenAuthorizer, load_dev_tokens
from proxy.auth.gitlab import GitLabClient
from proxy.cube.client import Buffered, CubeClient
from proxy.cube.forward import Forwarder, UpstreamCall
from proxy.cube.readiness import CubeReadiness, cube_urls
from proxy.cube.signing import Signer
from proxy.cube.tenants import Tenant, Tenants
from proxy.cube.zerofill import fill_plan
from proxy.errors import ApiError, CallerStalled, not_enabled
from proxy.http_client import HttpClient
from proxy.limits.caller_rate import RateLimiter
from proxy.limits.overload import LoadShedder
from proxy.limits.tenant_cap import TenantLimiter
from proxy.pipeline.access_log import AccessLog
from proxy.pipeline.coalesce import Coalescer, Outcome, StreamBroken
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.request_body import QueryRequest, parse_body, query_request
from proxy.pipeline.request_id import RequestIds, normalise_request_id
from proxy.settings import Settings
from proxy.singleflight import SingleFlightCache

log = logging.getLogger(__name__)


class ContinueWaitAnswer(Exception):
    """A meta answer that must reach the caller but never the cache."""

    def __init__(self, answer: Buffered) -> None:
        super().__init__("continue wait")
        self.answer = answer


class Pipeline:
    """The steps of an analytics request and the services they use; one per process (and app)."""

    cube_http: HttpClient
    readiness: CubeReadiness
    forwarder: Forwarder
    authorizer: Authorizer

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tenants = Tenants(settings)
        self.request_ids = RequestIds()
        self.access_log = AccessLog(settings.server.log_format)
        self.signer = Signer(_issuer(settings), settings.product_analytics.jwt_ttl)
        self.coalescer = Coalescer()
        self.meta_cache: SingleFlightCache[Tenant, Buffered] = SingleFlightCache(
            settings.cube.meta_cache_size, settings.cube.meta_cache_ttl
        )
        limits = settings.limits
        self.rate_limiter = RateLimiter(limits.rate_limit, limits.rate_limit_burst, limits.rate_limit_callers)
        self.shedder = LoadShedder(settings.server.shed_lag_ms / 1000)
        self.max_json_depth = limits.max_json_depth
        #: the session cookie's name when GitLab's browser sessions are accepted, else None
        self.session_cookie = settings.gitlab.session_cookie if settings.gitlab.sessions else None
        #: seconds a caller may read nothing of an answer being written (both doors enforce it)
        self.write_timeout = settings.server.write_timeout

    # -- lifecycle (the web adapter's cleanup_ctx) ---------------------------------------------

    @contextlib.asynccontextmanager
    async def open_cube(self) -> AsyncIterator[None]:
        """The Cube client pool and the forwarder over it; closed (with any fan-out) on the way out."""
        cube = self.settings.cube
        # no cookies, no redirects, no decompression: the client only speaks what Cube's API needs
        self.cube_http = HttpClient(
            limit=cube.pool_size, connect_timeout=cube.connect_timeout, pool_timeout=cube.queue_timeout
        )
        # large zero-fills are parsed, filled and serialised here, so no request holds the event loop for
        # them (a spawned process: nothing of this one's loop or sockets is copied into it; started on first use)
        fill_pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.forwarder = Forwarder(
            CubeClient(self.cube_http, cube.read_timeout, cube.buffer_limit, cube.max_whole_bytes),
            TenantLimiter(cube.max_concurrent_per_tenant, cube.queue_timeout),
            cube.continue_wait_budget,
            cube.continue_wait_pause,
            fill_pool,
        )
        self.readiness = CubeReadiness(cube_urls(self.settings), cube.readiness_ttl)
        try:
            yield
        finally:
            fill_pool.shutdown(wait=False, cancel_futures=True)
            await self.coalescer.close()
            await self.cube_http.close()
            await self.readiness.close()

    @contextlib.asynccontextmanager
    async def open_gitlab(self) -> AsyncIterator[None]:
        """The authorizer: GitLab's REST API over one client session, or the local stack's dev tokens."""
        settings = self.settings
        if settings.auth.backend == "dev_tokens":
            tokens = load_dev_tokens(settings.auth.dev_tokens_file)
            self.authorizer = DevTokenAuthorizer(tokens, settings.gitlab.min_access_level)
            yield
            return
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.gitlab.max_concurrent_calls, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),  # callers share this session: GitLab's cookies must not
        )
        try:
            client = GitLabClient(session, settings.gitlab.url, settings.gitlab.timeout, settings.gitlab.retry_after)
            self.authorizer = GitLabAuthorizer(client, settings.gitlab)
            yield
        finally:
            await session.close()

    @contextlib.asynccontextmanager
    async def overload_probe(self) -> AsyncIterator[None]:
        async with self.shedder.running():
            yield

    # -- the steps, in order ---------------------------------------------------------------

    def begin(self, method: str, route: str | None, request_id: str | None) -> Exchange:
        """Step 1: the request's id (the caller's if well-formed, else a fresh one) and its clock."""
        return Exchange(normalise_request_id(request_id, self.request_ids), method, route, time.perf_counter())

    def gate(self, exchange: Exchange, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Step 2, for analytics routes: shed while overloaded (503); a credential (401) within its rate (429)."""
        shedder = self.shedder
        if shedder.enabled and shedder.overloaded():
            raise ApiError(503, {"message": "The proxy is overloaded; retry shortly"}, {"Retry-After": "1"})
        credential = extract_credential(headers, query, self.session_cookie)
        limiter = self.rate_limiter
        if limiter.enabled:
            wait = limiter.check(credential.caller_key, time.monotonic())
            if wait is not None:
                raise ApiError(
                    429,
                    {"message": f"Too many requests from this caller; retry after {wait} s"},
                    {"Retry-After": str(wait)},
                )
        exchange.credential = credential

    async def answer_query(
        self, exchange: Exchange, endpoint: str, project_ref: str, raw: bytes, query_params: Mapping[str, str]
    ) -> Outcome:
        """Step 3 for load and dry-run: the body checked, the caller authorised, Cube asked (or a shared call)."""
        query = query_request(parse_body(raw, self.max_json_depth), query_params)
        tenant, grant = await self._grant_tenant(exchange, project_ref, "POST")
        gitlab_token = None
        if query.include_token:
            assert exchange.credential is not None
            gitlab_token = await self.authorizer.mint_token(exchange.credential, grant)
        call = UpstreamCall(
            tenant=tenant,
            endpoint=endpoint,
            method="POST",
            jwt=self.signer.sign(tenant, int(time.time()), gitlab_token),
            request_id=exchange.request_id,
            payload=query.payload,
            fill=fill_plan(query.query) if endpoint == "load" else None,
        )
        forwarder = self.forwarder
        outcome, shared = await self.coalescer.run(
            _coalesce_key(tenant, endpoint, query), lambda: forwarder.fetch(call)
        )
        exchange.cache = "shared" if shared else "miss"
        return outcome

    async def answer_meta(self, exchange: Exchange, project_ref: str, method: str, raw: bytes | None) -> Buffered:
        """Step 3 for meta: the body (POST) checked, the caller authorised, the tenant's meta from cache or Cube."""
        if raw is not None:
            parse_body(raw, self.max_json_depth)
        tenant, _ = await self._grant_tenant(exchange, project_ref, method)

        async def load_meta() -> Buffered:
            call = UpstreamCall(
                tenant=tenant,
                endpoint="meta",
                method="GET",
                jwt=self.signer.sign(tenant, int(time.time())),
                request_id=exchange.request_id,
                payload=None,
                whole=True,
            )
            answer = await self.forwarder.fetch(call)
            assert isinstance(answer, Buffered)  # meta is asked for whole (call.whole)
            if answer.continue_wait:
                raise ContinueWaitAnswer(answer)
            if answer.status != 200:
                body = answer.parsed if isinstance(answer.parsed, dict) else {"message": "Cube error"}
                raise ApiError(answer.status, body)
            return answer

        try:
            answer, hit = await self.meta_cache.get(tenant, load_meta)
        except ContinueWaitAnswer as cw:
            answer, hit = cw.answer, False
        exchange.cache = "hit" if hit else "miss"
        return answer

    def fault(self, exchange: Exchange) -> None:
        """Step 4, for an unexpected error (called from its ``except``): the traceback to the log, never the caller."""
        log.exception("unhandled error", extra={"event": "unhandled", "request_id": exchange.request_id})

    def stream_failed(self, exchange: Exchange, exc: Exception) -> None:
        """Step 4, when a streamed answer fails after its 200 went out (called from its ``except``).

        The caller's answer must not look whole, so the front door cuts its connection off.
        Cube's body breaking is a warning; anything else is a fault, logged with its traceback.
        """
        exchange.aborted = True
        if isinstance(exc, (ApiError, StreamBroken)):
            log.warning(
                "upstream body broke mid-stream; aborting the caller's answer",
                extra={"event": "stream_aborted", "request_id": exchange.request_id, "error": type(exc).__name__},
            )
        elif isinstance(exc, CallerStalled):
            log.warning("%s; cutting it off", exc, extra={"event": "caller_stalled", "request_id": exchange.request_id})
        else:
            self.fault(exchange)

    def finish(self, exchange: Exchange, status: int) -> None:
        """Step 5: one access line (when the access log is on)."""
        access_log = self.access_log
        if not access_log.enabled():
            return
        method, route = exchange.method, exchange.route
        access_log.write(
            f"{method} {route or '-'} {status}",
            {
                "event": "request",
                "request_id": exchange.request_id,
                "method": method,
                "route": route,
                "project": exchange.project,
                "status": status,
                "duration_ms": round((time.perf_counter() - exchange.started) * 1000, 2),
                "cache": exchange.cache,
                "aborted": exchange.aborted,
            },
        )

    # -- helpers ----------------------------------------------------------------------------

    async def _grant_tenant(self, exchange: Exchange, project_ref: str, method: str) -> tuple[Tenant, Grant]:
        """Authorise the caller for the route's project; its tenant, or 404 when analytics is off."""
        assert exchange.credential is not None, "the gate runs first"
        grant = await self.authorizer.authorize(exchange.credential, project_ref, method)
        exchange.project = grant.project_id
        tenant = self.tenants.get(grant.project_id)
        if tenant is None:
            raise not_enabled()
        return tenant, grant


def _coalesce_key(tenant: Tenant, endpoint: str, query: QueryRequest) -> tuple[Tenant, str, bytes] | None:
    if query.include_token:
        return None  # each such call carries its own minted token
    return (tenant, endpoint, query.fingerprint)


def _issuer(settings: Settings) -> str:
    host = yarl.URL(settings.gitlab.url).host
    return host or settings.gitlab.url
