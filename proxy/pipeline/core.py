"""The request pipeline: every step of an analytics request, in its order, for both front doors.

A request passes these steps, and both front doors (aiohttp's middlewares and views in
``proxy/web/``, the fast lane in ``proxy/lane/``) call them, in this order, and nothing else:

1. ``begin``: the request id (Cube's form) and the clock; an ``Exchange`` to carry.
2. ``gate`` (analytics routes): admission (503 while the loop lags), then the caller's
   credential (401) within its rate limit (429).
3. ``answer_query`` or ``answer_meta``: authorisation (GitLab), body checks, the tenant,
   signing, coalescing or the meta cache, the tenant slot and the Cube call.
4. The answer: an ``ApiError`` is its status, body and headers; any other error is
   ``fault`` (logged, a plain 500); a streamed answer goes out through ``relay`` (the write
   deadline), and one that fails after its 200 is ``stream_failed`` (logged, the caller's
   connection aborted). While draining, every answer closes its connection
   (``closes_connections``).
5. ``finish``: one access line.

With ``[tracing]`` on, ``begin`` starts the request's server span (``Exchange.trace``) and
``finish`` ends it; each step traces its own part under it (``docs/tracing.md`` draws the
tree). Off, each of those is one ``is not None``.

The services the steps use live in ``Services`` (``proxy/pipeline/services.py``); what the
probes and metrics read, in ``Health`` (``proxy/pipeline/health.py``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from proxy.auth.authorizer import Caller, Grant
from proxy.auth.credentials import Credential, extract_credential
from proxy.caching.cached_queries import answer_headers
from proxy.caching.coalesce import QueryAnswer, StreamBroken
from proxy.cube.client import Buffered
from proxy.cube.tenants import Tenant
from proxy.encoding import IDENTITY, accepts_gzip, represent
from proxy.errors import ApiError, CallerStalled, not_enabled, rate_limited, unavailable
from proxy.observe.tracing import CLIENT, Traced, error_of
from proxy.pipeline.client_info import client_address, traceparent, trusted_networks
from proxy.pipeline.cube_call import ask_cube
from proxy.pipeline.delivery import Send, Stream, relay, stream_headers
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.health import Health
from proxy.pipeline.meta import tenant_meta
from proxy.pipeline.path_template import path_template
from proxy.pipeline.request_body import BodySource, QueryRequest, parse_body, query_request, too_large
from proxy.pipeline.request_id import REQUEST_ID_HEADER, normalise_request_id
from proxy.pipeline.routes import (
    ACCEPT_ENCODING,
    CLIENT_CLOSED_REQUEST,
    FORWARDED_FOR,
    IF_NONE_MATCH,
    PROBE_ROUTES,
    STANDARD_METHODS,
    TRACEPARENT,
    USER_AGENT,
)
from proxy.pipeline.services import Services
from proxy.pipeline.spans import end_server_span, server_span
from proxy.settings import Settings

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Pipeline:
    """The steps of an analytics request, over one process's ``Services``; one per process (and app)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = services = Services(settings)
        self.health = Health(services)
        self.metrics = services.metrics
        #: the tracer with ``[tracing]`` on, else None
        self.tracing = services.tracing
        self._trusted = trusted_networks(settings.server.trusted_proxies)
        #: the session cookie's name when GitLab's browser sessions are accepted, else None
        self.session_cookie = settings.gitlab.session_cookie if settings.gitlab.sessions else None
        #: seconds a caller may read nothing of an answer being written (``relay`` keeps it for both doors)
        self.write_timeout = settings.server.write_timeout
        self.max_json_depth = settings.limits.max_json_depth

    def drain(self) -> None:
        """From now on readiness fails and every answer closes its connection (SIGTERM: callers move on)."""
        self.health.draining = True

    @property
    def closes_connections(self) -> bool:
        """Whether an answer written now must say ``Connection: close`` (draining): the rule for both doors."""
        return self.health.draining

    def answer_headers(self, exchange: Exchange) -> dict[str, str] | None:
        """The headers the answer cache adds to an answer (``X-Cache``, ``Age``), for both doors; None mostly."""
        return answer_headers(exchange)

    def whole(
        self, exchange: Exchange, status: int, body: bytes, coding: str = IDENTITY, tag: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """A whole answer (or error) as it goes to this caller (``proxy.encoding.represent``)."""
        return represent(exchange.gzip, exchange.if_none_match, status, body, coding, tag)

    def stream_headers(self, exchange: Exchange) -> dict[str, str]:
        """A streamed answer's headers of form (``relay`` gzips it for a caller that takes gzip)."""
        return stream_headers(exchange)

    async def relay(self, stream: Stream, exchange: Exchange, send: Send) -> bool:
        """A streamed answer written through ``send`` under the write deadline; False if it broke (the door
        then cuts the connection off). See ``proxy.pipeline.delivery.relay``."""
        if (trace := exchange.trace) is None:
            return await relay(stream, exchange, send, self.write_timeout, self.stream_failed)
        with trace.child("relay") as span:
            whole = await relay(stream, exchange, send, self.write_timeout, self.stream_failed)
            span.set("proxy.bytes_sent", exchange.bytes_sent)
            if not whole:
                span.fail("aborted", "the streamed answer was cut off")
            return whole

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
            normalise_request_id(headers.get(REQUEST_ID_HEADER), self.services.request_ids),
            method,
            route,
            time.perf_counter(),
        )
        if route is None:
            exchange.path = path_template(path)
        exchange.bytes_received = length
        exchange.client = client_address(peer, headers.get(FORWARDED_FOR), self._trusted) if self._trusted else peer
        user_agent = headers.get(USER_AGENT)
        if user_agent is not None and not user_agent.isascii():
            # aiohttp keeps bytes that are not UTF-8 as lone surrogates, which no JSON line can hold
            user_agent = user_agent.encode("utf-8", "backslashreplace").decode("utf-8")
        exchange.user_agent = user_agent
        if (trace := headers.get(TRACEPARENT)) is not None:
            exchange.traceparent = traceparent(trace)
        if (accepted := headers.get(ACCEPT_ENCODING)) is not None:
            exchange.gzip = accepts_gzip(accepted)
        exchange.if_none_match = headers.get(IF_NONE_MATCH)
        if self.tracing is not None:
            exchange.trace = server_span(self.tracing, exchange, headers, peer, self._trusted)
        self.metrics.in_flight += 1
        return exchange

    def gate(self, exchange: Exchange, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Step 2, for analytics routes: shed while overloaded (503); a credential (401) within its rate (429)."""
        shedder = self.services.shedder
        if shedder.enabled and shedder.overloaded():
            self.metrics.refusal("shed")
            raise unavailable("The proxy is overloaded; retry shortly")
        credential = extract_credential(headers, query, self.session_cookie)
        limiter = self.services.rate_limiter
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
        credential = exchange.credential
        assert credential is not None  # set by the gate
        if exchange.trace is None:  # untraced: no layer around the two calls
            await self._shared_rate(credential, None)
            caller = await self.services.authorizer.identify(credential)
        else:
            caller = await self._checked(
                exchange, exchange.trace, lambda span: self.services.authorizer.identify(credential, span)
            )
        exchange.user_id = caller.user_id
        return caller

    async def answer_query(
        self,
        exchange: Exchange,
        endpoint: str,
        project_ref: str,
        body: BodySource,
        query_params: Mapping[str, str],
    ) -> QueryAnswer:
        """Step 3 for load and dry-run: the caller authorised, then the body read and checked, then Cube asked.

        Authorisation comes first: a caller without a valid credential costs at most what its
        front door read of a bounded body, never a parse or a depth check.
        """
        self._check_declared_size(body)
        tenant, grant = await self._grant_tenant(exchange, project_ref, "POST")
        query = query_request(await self._parsed_body(exchange, body), query_params)
        if query.renews:  # each makes Cube run the query again: the project's renewal rate (429 past it)
            self.services.renewal_allowed(tenant)
        if query.include_token:  # a personal call: the one place it branches off (see ``_personal``)
            return await self._personal(exchange, tenant, grant, endpoint, query)
        if tenant.answer_ttl > 0:  # the answer cache, which asks Cube through ``ask`` when it must
            return await self._cached(exchange, tenant, endpoint, query)
        return await ask_cube(
            self.services, exchange, tenant, endpoint, query, None, exchange.request_id, exchange.trace
        )

    async def _cached(self, exchange: Exchange, tenant: Tenant, endpoint: str, query: QueryRequest) -> QueryAnswer:
        """The answer cache's answer (traced as ``answer cache``, its say an attribute), asking Cube through ``ask``."""
        request_id = exchange.request_id
        span = exchange.trace.child("answer cache") if exchange.trace is not None else None

        async def ask(recorded: Exchange | None) -> QueryAnswer:  # recorded is None: a refresh nobody waits on
            return await ask_cube(
                self.services, recorded, tenant, endpoint, query, None, request_id, span if recorded else None
            )

        try:
            return await self.services.cached_queries.answer(exchange, tenant, endpoint, query, ask)
        except BaseException as exc:
            if span is not None:
                span.fail(*error_of(exc))
            raise
        finally:
            if span is not None:
                verdict = exchange.cache
                span.set("proxy.cache.status", (verdict.header or "") if verdict is not None else "")
                span.end()

    async def _personal(
        self, exchange: Exchange, tenant: Tenant, grant: Grant, endpoint: str, query: QueryRequest
    ) -> QueryAnswer:
        """An ``include_token`` call, whose JWT carries a token minted for this caller: it branches off here, before
        the answer cache and the coalescer see it (never kept nor served kept: ``X-Cache: BYPASS``; never joined)."""
        assert exchange.credential is not None
        gitlab_token = await self.services.authorizer.mint_token(exchange.credential, grant, exchange.trace)
        answer = await ask_cube(
            self.services, exchange, tenant, endpoint, query, gitlab_token, exchange.request_id, exchange.trace
        )
        if tenant.answer_ttl > 0:
            self.services.cached_queries.bypassed(exchange)
        return answer

    async def answer_meta(self, exchange: Exchange, project_ref: str, method: str, body: BodySource | None) -> Buffered:
        """Step 3 for meta: the caller authorised, the body (POST) read and checked, the tenant's meta from cache
        or Cube."""
        if body is not None:
            self._check_declared_size(body)
        tenant, _ = await self._grant_tenant(exchange, project_ref, method)
        if body is not None:
            await self._parsed_body(exchange, body)

        return await tenant_meta(self.services, exchange, tenant)

    def fault(self, exchange: Exchange) -> None:
        """Step 4, for an unexpected error (called from its ``except``): the traceback to the log, never the caller."""
        if exchange.trace is not None and (exc := sys.exception()) is not None:
            exchange.trace.fail(*error_of(exc))
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
        label = method if method in STANDARD_METHODS else "other"
        metrics.request_finished(route or "unmatched", label, status, seconds, exchange.bytes_sent)
        tally = exchange.tally
        if tally is not None:
            tally.in_flight -= 1
            tally.requests += 1
            if status >= 400:
                tally.errors += 1
        if (trace := exchange.trace) is not None:
            end_server_span(trace, exchange, status)
        access_log = self.services.access_log
        probe = route in PROBE_ROUTES
        if not access_log.enabled(probe):
            return
        access_log.request(exchange, status, seconds, probe)

    # -- helpers ----------------------------------------------------------------------------

    async def _grant_tenant(self, exchange: Exchange, project_ref: str, method: str) -> tuple[Tenant, Grant]:
        """Authorise the caller for the route's project; its tenant, or 404 when analytics is off."""
        credential = exchange.credential
        assert credential is not None, "the gate runs first"
        authorizer = self.services.authorizer
        if exchange.trace is None:  # untraced: no layer around the two calls
            await self._shared_rate(credential, None)
            grant = await authorizer.authorize(credential, project_ref, method)
        else:
            grant = await self._checked(
                exchange, exchange.trace, lambda span: authorizer.authorize(credential, project_ref, method, span)
            )
        exchange.project = grant.project_id
        exchange.user_id = grant.caller.user_id
        tally = exchange.tally = self.metrics.project(grant.project_id)
        tally.in_flight += 1
        tenant = self.services.tenants.get(grant.project_id)
        if tenant is None:
            raise not_enabled()
        return tenant, grant

    async def _checked(self, exchange: Exchange, trace: Traced, check: Callable[[Traced], Awaitable[_T]]) -> _T:
        """A traced request's credential step: the caller's fleet-wide rate, then ``check`` (the authorizer's
        look-up), as ``credential`` under ``trace`` (an error marks it: ``Traced``'s context)."""
        assert exchange.credential is not None
        with trace.child("credential") as span:
            await self._shared_rate(exchange.credential, span)
            return await check(span)

    def _check_declared_size(self, body: BodySource) -> None:
        """413 for a declared ``Content-Length`` over the limit: free to check, so before anyone is asked."""
        limit = self.settings.limits.max_body_bytes
        if body.length is not None and body.length > limit:
            raise too_large(limit)

    async def _parsed_body(self, exchange: Exchange, body: BodySource) -> dict[str, Any]:
        """The body read (within the bodies-in-flight budget) and parsed as a JSON object; 4xx for bad input."""
        size = body.length if body.length is not None else self.settings.limits.max_body_bytes
        budget, client = self.services.body_budget, exchange.client
        budget.take(client, size)
        try:
            return parse_body(await body.read(), self.max_json_depth)
        finally:
            budget.give(client, size)

    async def _shared_rate(self, credential: Credential, under: Traced | None) -> None:
        """The caller's fleet-wide bucket (with ``[redis]``, after the process's own in the gate): 429 when empty.
        Traced as ``fleet rate`` (a Redis call)."""
        shared = self.services.shared
        if shared is not None and self.services.rate_limiter.enabled:
            limits = self.settings.limits
            span = under.child("fleet rate", CLIENT, {"db.system.name": "redis"}) if under is not None else None
            try:
                wait = await shared.rate(credential.caller_key, limits.rate_limit, limits.rate_limit_burst)
            finally:
                if span is not None:
                    span.end()
            if wait is not None:
                self.metrics.refusal("rate_limited")
                raise rate_limited(wait)
