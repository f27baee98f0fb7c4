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

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import yarl

from proxy.auth.authorizer import Authorizer, Caller, GitLabAuthorizer, Grant
from proxy.auth.credentials import Credential, extract_credential
from proxy.auth.dev_tokens import DevTokenAuthorizer, load_dev_tokens
from proxy.auth.gitlab import GitLabClient
from proxy.background import in_background
from proxy.cube.client import Buffered, CubeClient
from proxy.cube.fill_queue import FillProcess, FillQueue
from proxy.cube.forward import Forwarder, UpstreamCall
from proxy.cube.readiness import CubeReadiness, cube_urls
from proxy.cube.signing import Signer
from proxy.cube.tenants import Tenant, Tenants
from proxy.cube.zerofill import fill_plan
from proxy.errors import ApiError, CallerStalled, not_enabled, rate_limited
from proxy.http_client import HttpClient
from proxy.limits.body_budget import BodyBudget
from proxy.limits.byte_budget import ByteBudget
from proxy.limits.caller_rate import RateLimiter
from proxy.limits.overload import LoadShedder
from proxy.limits.tenant_cap import TenantLimiter
from proxy.observe.metrics import LAG_SAMPLE_SECONDS, Metrics, NoMetrics
from proxy.pipeline.access_log import AccessLog
from proxy.pipeline.client_info import client_address, traceparent, trusted_networks
from proxy.pipeline.coalesce import Coalescer, Outcome, StreamBroken
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.path_template import path_template
from proxy.pipeline.request_body import BodySource, QueryRequest, parse_body, query_request, too_large
from proxy.pipeline.request_id import REQUEST_ID_HEADER, RequestIds, normalise_request_id
from proxy.pipeline.routes import FORWARDED_FOR, PROBE_ROUTES, TRACEPARENT, USER_AGENT
from proxy.settings import Settings
from proxy.shared.codecs import MetaCodec
from proxy.shared.connect import redis_client
from proxy.shared.fleet import Fleet
from proxy.singleflight import SingleFlightCache
from proxy.urls import redact_url

log = logging.getLogger(__name__)

#: the status of a request whose caller went away before its answer was whole (nginx's convention)
CLIENT_CLOSED_REQUEST = 499
#: seconds between two sweeps of the caches' expired entries
SWEEP_SECONDS = 1.0
#: seconds a fill under way may take to finish at shutdown before its process is ended
FILL_GRACE_SECONDS = 2.0


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
            settings.cube.meta_cache_size,
            settings.cube.meta_cache_ttl,
            size_of=_answer_size,
            max_bytes=settings.cube.meta_cache_bytes,
        )
        limits = settings.limits
        self.rate_limiter = RateLimiter(limits.rate_limit, limits.rate_limit_burst, limits.rate_limit_callers)
        self.shedder = LoadShedder(settings.server.shed_lag_ms / 1000)
        self.max_json_depth = limits.max_json_depth
        self.body_budget = BodyBudget(limits.bodies_in_flight_bytes, limits.bodies_in_flight_per_client_bytes)
        server = settings.server
        #: every count the metrics and the status page show (this process's)
        self.metrics = (
            Metrics(server.metrics_project_label, server.metrics_max_projects) if server.metrics else NoMetrics()
        )
        #: the fast lane's (served, handed over) counts, and the open client connections by front door, when a
        #: lane serves this pipeline
        self.lane_counts: Callable[[], tuple[int, int]] | None = None
        self.connections: Callable[[], dict[str, int]] | None = None
        #: shutting down: readiness says so from SIGTERM on, while requests are still served
        self.draining = False
        self._trusted = trusted_networks(server.trusted_proxies)
        self._gitlab_client: GitLabClient | None = None
        #: the fleet's shared layer on Redis, when ``[redis] url`` is set (``open_redis``)
        self.fleet: Fleet | None = None
        #: GitLab's reachability for readiness, asked at most once per ``readiness_ttl``
        self._gitlab_up: SingleFlightCache[str, bool] = SingleFlightCache(1, settings.cube.readiness_ttl)
        self._shared_up: SingleFlightCache[str, bool] = SingleFlightCache(1, settings.cube.readiness_ttl)
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
        # large zero-fills are parsed, filled and serialised in a process of their own, a turn per tenant
        fill_process = FillProcess()
        self.fills = FillQueue(fill_process)
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
            self.metrics,
        )
        self.readiness = CubeReadiness(cube_urls(self.settings), cube.readiness_ttl)
        try:
            yield
        finally:
            await fill_process.close(FILL_GRACE_SECONDS)
            await self.coalescer.close()
            await self.cube_http.close()
            await self.readiness.close()

    @contextlib.asynccontextmanager
    async def open_redis(self) -> AsyncIterator[None]:
        """The fleet's shared layer (``[redis] url``): one connection pool for this process; none without a URL."""
        config = self.settings.redis
        if not config.enabled:
            yield
            return
        assert config.signing_key is not None  # validated with the url
        client = redis_client(config)
        self.fleet = Fleet(
            client, config.signing_key, config.key_prefix, config.timeout, config.lock_ttl, metrics=self.metrics
        )
        self.meta_cache.share(self.fleet, "meta", MetaCodec(_buffered), config.local_ttl)
        await self.fleet.ping()  # a first connection before traffic (not required: a failure only logs)
        try:
            yield
        finally:
            await self.fleet.close()

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
            client = GitLabClient(
                session, settings.gitlab.url, settings.gitlab.timeout, settings.gitlab.retry_after, self.metrics
            )
            authorizer = GitLabAuthorizer(client, settings.gitlab, metrics=self.metrics)
            if self.fleet is not None:
                authorizer.share(self.fleet, settings.redis.local_ttl)
            self.authorizer = authorizer
            self._gitlab_client = client
            yield
        finally:
            await session.close()

    @contextlib.asynccontextmanager
    async def housekeeping(self) -> AsyncIterator[None]:
        """Expired cache entries (GitLab's answers, refusals, meta) dropped every ``SWEEP_SECONDS``, not left
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
            self.authorizer.expire()  # opened before the sweep starts (``create_app``'s order)

    @contextlib.asynccontextmanager
    async def overload_probe(self) -> AsyncIterator[None]:
        async with self.shedder.running():
            yield

    # -- the steps, in order ---------------------------------------------------------------

    def begin(
        self,
        method: str,
        route: str | None,
        headers: Mapping[str, str],
        peer: str | None,
        path: str = "",
        length: int | None = None,
    ) -> Exchange:
        """Step 1: the request's id (the caller's if well-formed, else a fresh one), its clock, and its caller.

        The caller is its address (``X-Forwarded-For`` believed only from ``trusted_proxies``),
        its ``User-Agent`` and its W3C ``traceparent`` (kept if valid, and sent on to Cube).
        An unrouted request keeps its path as a template (``path``: the raw path, read only
        then); ``length`` is the body's declared size.
        """
        exchange = Exchange(
            normalise_request_id(headers.get(REQUEST_ID_HEADER), self.request_ids), method, route, time.perf_counter()
        )
        if route is None:
            exchange.path = path_template(path)
        exchange.bytes_received = length
        exchange.client = client_address(peer, headers.get(FORWARDED_FOR), self._trusted) if self._trusted else peer
        exchange.user_agent = headers.get(USER_AGENT)
        if (trace := headers.get(TRACEPARENT)) is not None:
            exchange.traceparent = traceparent(trace)
        self.metrics.in_flight += 1
        return exchange

    def gate(self, exchange: Exchange, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Step 2, for analytics routes: shed while overloaded (503); a credential (401) within its rate (429)."""
        shedder = self.shedder
        if shedder.enabled and shedder.overloaded():
            self.metrics.refusal("shed")
            raise ApiError(503, {"message": "The proxy is overloaded; retry shortly"}, {"Retry-After": "1"})
        credential = extract_credential(headers, query, self.session_cookie)
        limiter = self.rate_limiter
        if limiter.enabled:
            wait = limiter.check(credential.caller_key, time.monotonic())
            if wait is not None:
                self.metrics.refusal("rate_limited")
                raise rate_limited(wait)
        exchange.credential = credential

    async def identify(self, exchange: Exchange, headers: Mapping[str, str], query: Mapping[str, str]) -> Caller:
        """Who the request's credential belongs to, through the same gate, rate limits and new-credential
        budget as the analytics routes (the one way anything here looks a caller up); 401 if nobody."""
        self.gate(exchange, headers, query)
        assert exchange.credential is not None  # set by the gate
        await self._fleet_rate(exchange.credential)
        caller = await self.authorizer.identify(exchange.credential)
        exchange.user_id = caller.user_id
        return caller

    async def answer_query(
        self,
        exchange: Exchange,
        endpoint: str,
        project_ref: str,
        body: BodySource,
        query_params: Mapping[str, str],
    ) -> Outcome:
        """Step 3 for load and dry-run: the caller authorised, then the body read and checked, then Cube asked.

        Authorisation comes first: a caller without a valid credential costs at most what its
        front door read of a bounded body, never a parse or a depth check.
        """
        self._check_declared_size(body)
        tenant, grant = await self._grant_tenant(exchange, project_ref, "POST")
        query = query_request(await self._parsed_body(exchange, body), query_params)
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
            traceparent=exchange.traceparent,
        )
        forwarder = self.forwarder
        asked = time.perf_counter()
        try:
            outcome, shared = await self.coalescer.run(
                _coalesce_key(tenant, endpoint, query), lambda: forwarder.fetch(call)
            )
        finally:
            exchange.cube_seconds = time.perf_counter() - asked
        exchange.cube_status = outcome.status if isinstance(outcome, Buffered) else 200
        exchange.cube_url = tenant.shown_url
        exchange.cache = "shared" if shared else "miss"
        if shared:
            self.metrics.shared_calls += 1
            if (tally := exchange.tally) is not None:  # set by the authorisation
                tally.coalesced += 1
        else:
            self.metrics.own_calls += 1
        return outcome

    async def answer_meta(self, exchange: Exchange, project_ref: str, method: str, body: BodySource | None) -> Buffered:
        """Step 3 for meta: the caller authorised, the body (POST) read and checked, the tenant's meta from cache
        or Cube."""
        if body is not None:
            self._check_declared_size(body)
        tenant, _ = await self._grant_tenant(exchange, project_ref, method)
        if body is not None:
            await self._parsed_body(exchange, body)

        async def load_meta() -> Buffered:
            call = UpstreamCall(
                tenant=tenant,
                endpoint="meta",
                method="GET",
                jwt=self.signer.sign(tenant, int(time.time())),
                request_id=exchange.request_id,
                payload=None,
                whole=True,
                traceparent=exchange.traceparent,
            )
            answer = await self.forwarder.fetch(call)
            assert isinstance(answer, Buffered)  # meta is asked for whole (call.whole)
            if answer.continue_wait:
                raise ContinueWaitAnswer(answer)
            if answer.status != 200:
                body = answer.parsed if isinstance(answer.parsed, dict) else {"message": "Cube error"}
                raise ApiError(answer.status, body)
            return answer

        asked = time.perf_counter()
        try:
            answer, hit = await self.meta_cache.get(tenant, load_meta)
        except ContinueWaitAnswer as cw:
            answer, hit = cw.answer, False
        finally:
            exchange.cube_seconds = time.perf_counter() - asked
        exchange.cache = "hit" if hit else "miss"
        if hit:  # Cube was not asked: no status, no time, no Cube
            exchange.cube_seconds = None
        else:
            exchange.cube_status = answer.status
            exchange.cube_url = tenant.shown_url
        tally = exchange.tally
        assert tally is not None  # set by the authorisation
        if hit:
            self.metrics.meta_hits += 1
            tally.meta_hits += 1
        else:
            self.metrics.meta_misses += 1
            tally.meta_misses += 1
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
        """Step 5: the request counted (metrics, its project's tally), and one access line (when the log is on).

        Probes (health, metrics, status) are logged at DEBUG, everything else at INFO.
        """
        seconds = time.perf_counter() - exchange.started
        if exchange.hung_up:
            status = CLIENT_CLOSED_REQUEST
        method, route = exchange.method, exchange.route
        metrics = self.metrics
        # a caller can send any method token: only the standard ones become a label, the rest "other"
        label = method if method in _METHODS else "other"
        metrics.request_finished(route or "unmatched", label, status, seconds, exchange.bytes_sent)
        tally = exchange.tally
        if tally is not None:
            tally.in_flight -= 1
            tally.requests += 1
            if status >= 400:
                tally.errors += 1
        access_log = self.access_log
        probe = route in PROBE_ROUTES
        if not access_log.enabled(probe):
            return
        trace = exchange.traceparent
        access_log.write(
            f"{method} {route or exchange.path} {status}",
            {
                "event": "request",
                "request_id": exchange.request_id,
                "method": method,
                "route": route,
                "path": exchange.path,
                "project": exchange.project,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "bytes": exchange.bytes_sent,
                "request_bytes": exchange.bytes_received,
                "client": exchange.client,
                "user_agent": exchange.user_agent,
                "user_id": exchange.user_id,
                "cache": exchange.cache,
                "cube": exchange.cube_url,
                "cube_status": exchange.cube_status,
                "cube_ms": None if exchange.cube_seconds is None else round(exchange.cube_seconds * 1000, 2),
                "trace_id": trace[3:35] if trace is not None else None,
                "span_id": trace[36:52] if trace is not None else None,
                "aborted": exchange.aborted,
            },
            probe,
        )

    async def readiness_report(self) -> tuple[bool, dict[str, Any]]:
        """Whether this proxy can serve, and why: not while shutting down, nor while every Cube is down (one
        tenant's Cube down is not an outage of the others), nor (``[gitlab] ready_check``) while GitLab is."""
        if self.draining:
            return False, {"status": "shutting down"}
        cubes = await self.readiness.check()
        report: dict[str, Any] = {
            "cubes": {redact_url(url): "up" if up else "down" for url, up in cubes.items()},
            "down": [redact_url(url) for url, up in cubes.items() if not up],
        }
        ready = any(cubes.values())
        if self.settings.gitlab.ready_check and self._gitlab_client is not None:
            gitlab_up, _ = await self._gitlab_up.get("gitlab", self._gitlab_client.reachable)
            report["gitlab"] = "up" if gitlab_up else "down"
            ready = ready and gitlab_up
        if self.fleet is not None:
            shared_up, _ = await self._shared_up.get("redis", self.fleet.ping)
            report["shared"] = "ok" if shared_up else "degraded"  # local caches serve meanwhile: not an outage
        report["status"] = "ready" if ready else "unavailable"
        return ready, report

    def gauges(self) -> dict[str, float]:
        """This process's gauges for a metrics snapshot: Cube pool connections and waiting callers, Redis' state."""
        found: dict[str, float] = {}
        pools = self.cube_http.pools() if hasattr(self, "cube_http") else []
        found["pool_open"] = sum(pool.open_connections for pool in pools)
        found["pool_idle"] = sum(pool.idle_connections for pool in pools)
        found["pool_waiting"] = sum(pool.waiting for pool in pools)
        if self.fleet is not None:
            found["shared_degraded"] = 1 if self.fleet.degraded else 0
        if self.connections is not None:
            for door, count in self.connections().items():
                found[f"connections_{door}"] = count
        return found

    def cube_up(self) -> dict[str, int]:
        """Each Cube, as shown, and whether the last readiness check found it up."""
        last = self.readiness.last if hasattr(self, "readiness") else {}
        return {redact_url(url): int(up) for url, up in last.items()}

    def counters(self) -> dict[str, list[list[Any]]]:
        """This process's counters kept outside ``Metrics`` (the lane's, the shared layer's), as snapshot rows:
        summed over every worker, a dead one's included, like every other counter."""
        found: dict[str, list[list[Any]]] = {}
        if self.lane_counts is not None:
            served, handed_over = self.lane_counts()
            found["lane"] = [["served", served], ["handed_over", handed_over]]
        if self.fleet is not None:
            found["shared_refused"] = [[self.fleet.tampered]]
        return found

    # -- helpers ----------------------------------------------------------------------------

    async def _grant_tenant(self, exchange: Exchange, project_ref: str, method: str) -> tuple[Tenant, Grant]:
        """Authorise the caller for the route's project; its tenant, or 404 when analytics is off."""
        assert exchange.credential is not None, "the gate runs first"
        await self._fleet_rate(exchange.credential)
        grant = await self.authorizer.authorize(exchange.credential, project_ref, method)
        exchange.project = grant.project_id
        exchange.user_id = grant.caller.user_id
        tally = exchange.tally = self.metrics.project(grant.project_id)
        tally.in_flight += 1
        tenant = self.tenants.get(grant.project_id)
        if tenant is None:
            raise not_enabled()
        return tenant, grant

    def _check_declared_size(self, body: BodySource) -> None:
        """413 for a declared ``Content-Length`` over the limit: free to check, so before anyone is asked."""
        limit = self.settings.limits.max_body_bytes
        if body.length is not None and body.length > limit:
            raise too_large(limit)

    async def _parsed_body(self, exchange: Exchange, body: BodySource) -> dict[str, Any]:
        """The body read (within the bodies-in-flight budget) and parsed as a JSON object; 4xx for bad input."""
        size = body.length if body.length is not None else self.settings.limits.max_body_bytes
        budget, client = self.body_budget, exchange.client
        budget.take(client, size)
        try:
            return parse_body(await body.read(), self.max_json_depth)
        finally:
            budget.give(client, size)

    async def _fleet_rate(self, credential: Credential) -> None:
        """The caller's fleet-wide bucket (with ``[redis]``, after the process's own in the gate): 429 when empty."""
        fleet = self.fleet
        if fleet is not None and self.rate_limiter.enabled:
            limits = self.settings.limits
            wait = await fleet.rate(credential.caller_key, limits.rate_limit, limits.rate_limit_burst)
            if wait is not None:
                self.metrics.refusal("rate_limited")
                raise rate_limited(wait)


def _coalesce_key(tenant: Tenant, endpoint: str, query: QueryRequest) -> tuple[Tenant, str, bytes] | None:
    if query.include_token:
        return None  # each such call carries its own minted token
    return (tenant, endpoint, query.fingerprint)


#: the methods that are metrics labels as they are (any other is counted as "other")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _answer_size(answer: Buffered) -> int:
    return len(answer.body)


def _buffered(status: int, body: bytes) -> Buffered:
    return Buffered(status, body, None)


def _issuer(settings: Settings) -> str:
    host = yarl.URL(settings.gitlab.url).host
    return host or settings.gitlab.url
