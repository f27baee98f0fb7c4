"""One call to Cube: a tenant slot, the Continue-wait loop, and the zero-fill."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import orjson

from proxy.cube.client import Buffered, CubeAnswer, CubeClient, Streamed
from proxy.cube.error_map import DATABASE_UNAVAILABLE
from proxy.cube.fill_queue import FillQueue, filled
from proxy.cube.tenants import Tenant
from proxy.cube.zerofill import FillPlan, zero_fill
from proxy.errors import ApiError
from proxy.limits.tenant_cap import TenantLimiter
from proxy.observe.metrics import Metrics
from proxy.observe.tracing import CLIENT, Traced, error_of

log = logging.getLogger(__name__)

#: a zero-fill that may add more rows than this, or of an answer the Cube client left unparsed (larger
#: than PARSE_ON_LOOP_BYTES), is parsed, filled and serialised in the fill process, off the event loop
FILL_ON_LOOP_DAYS = 1000


#: a Cube call that failed, as its metrics outcome
_FAULTS = {504: "timeout", 502: "unreachable", 503: "queue_timeout"}


class UpstreamCall(NamedTuple):
    """One call to make: immutable, made per request."""

    tenant: Tenant
    endpoint: str  # "load", "dry-run" or "meta"
    method: str
    jwt: str
    request_id: str
    payload: bytes | None
    fill: FillPlan | None = None
    #: read the whole body even when large (meta, which is cached whole).
    whole: bool = False
    #: the caller's W3C trace context, sent on to Cube (when the proxy does not trace: with ``trace``, each round's
    #: own span is sent instead)
    traceparent: str | None = None
    #: the span this call's rounds and zero-fill are traced under (``[tracing]``), else None
    trace: Traced | None = None


class _LastRound:
    """The last Continue-wait answer of a call's rounds: it holds that answer's whole-answers budget bytes and gives
    them back in one place, when a newer round replaces it, when it becomes the answer, or when the rounds end."""

    __slots__ = ("_give", "answer")

    def __init__(self, give: Callable[[Buffered], None]) -> None:
        self._give = give
        self.answer: Buffered | None = None

    def keep(self, answer: Buffered) -> None:
        self.close()
        self.answer = answer

    def take(self) -> Buffered:
        """The kept answer, as the call's answer (its budget bytes given back: the caller's own bytes now)."""
        answer = self.answer
        assert answer is not None
        self.close()
        return answer

    def close(self) -> None:
        if self.answer is not None:
            self._give(self.answer)
            self.answer = None


class Forwarder:
    def __init__(
        self,
        cube: CubeClient,
        limiter: TenantLimiter,
        continue_wait_budget: float,
        continue_wait_pause: float = 0.5,
        fills: FillQueue | None = None,
        *,
        metrics: Metrics,
    ) -> None:
        self._cube = cube
        #: each attempt counted by endpoint and outcome, and timed
        self._metrics = metrics
        #: where large zero-fills run (a process of their own, a turn per tenant); None fills here, on the loop
        self._fills = fills
        self._limiter = limiter
        self._budget = continue_wait_budget
        #: the least seconds from one round's start to the next's (a Cube that answers at once is not hammered)
        self._pause = continue_wait_pause

    async def fetch(self, call: UpstreamCall) -> CubeAnswer:
        """Cube's answer to ``call``: its rounds (``_rounds``), then the zero-fill when the call asks for one. What
        the caller gets is its own bytes: a whole answer's budget bytes are given back here."""
        answer = await self._rounds(call)
        if isinstance(answer, Streamed):
            return answer  # its slot is released when the stream is closed
        try:
            if call.fill is not None and answer.status == 200 and not answer.continue_wait:
                return await self._filled(call, call.fill, answer)
            return answer
        finally:
            self._let_go(answer)  # what the caller gets is its own bytes now (a fill's, or the meta cache's)

    async def _filled(self, call: UpstreamCall, plan: FillPlan, answer: Buffered) -> Buffered:
        """The zero-filled answer: on the loop when small and parsed, else in the fill process. Traced as
        ``zero-fill`` (where it ran, and the most days it adds); the fill process's turn is within that span."""
        on_loop = answer.parsed is not None and plan.days <= FILL_ON_LOOP_DAYS
        span = None
        if call.trace is not None:
            where = "loop" if on_loop else "fill process"
            span = call.trace.child("zero-fill", attributes={"proxy.fill.where": where, "proxy.fill.days": plan.days})
        try:
            if on_loop:
                return Buffered(200, orjson.dumps(zero_fill(plan, answer.parsed)), None)
            return Buffered(200, await self._fill_elsewhere(call.tenant, plan, answer.body), None)
        except BaseException as exc:
            if span is not None:
                span.fail(*error_of(exc))
            raise
        finally:
            if span is not None:
                span.end()

    async def _rounds(self, call: UpstreamCall) -> CubeAnswer:
        """Ask Cube, asking again on Continue wait until the budget runs out.

        The first attempt always gets Cube's full read timeout; a later one only
        what is left of the budget, after which the last Continue wait is the answer.
        Rounds start at least ``continue_wait_pause`` apart, so the rounds one call can
        make are bounded by the budget over the pause, however fast Cube answers.
        """
        # time.monotonic, not the loop's clock: on Python 3.11 asking for the running loop costs a getpid() call
        deadline = time.monotonic() + self._budget
        url = call.tenant.endpoint(call.endpoint)
        last = _LastRound(self._let_go)
        try:
            attempt = 0
            while True:
                attempt += 1
                started = time.monotonic()
                read_timeout = None if attempt == 1 else min(self._cube.read_timeout, deadline - started)
                try:
                    if call.trace is None:  # untraced: no layer between the slot and the round
                        release = await self._limiter.acquire(call.tenant.app_id)
                        answer = await self._round(call, url, read_timeout, release, call.traceparent)
                    else:
                        answer = await self._traced_attempt(call, call.trace, url, read_timeout, attempt)
                except ApiError as exc:
                    if exc.status == 504 and last.answer is not None:  # a later round timed out: the last wait
                        return last.take()
                    raise
                if isinstance(answer, Streamed) or not answer.continue_wait or deadline - time.monotonic() <= 0:
                    return answer
                last.keep(answer)
                log.debug("continue wait", extra={"event": "continue_wait", "attempt": attempt})
                wait = min(started + self._pause, deadline) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # the pause itself, not a synchronisation
        finally:
            last.close()

    async def _traced_attempt(
        self, call: UpstreamCall, trace: Traced, url: str, read_timeout: float | None, attempt: int
    ) -> CubeAnswer:
        """One traced round: the wait for the tenant's slot as ``tenant slot``, then Cube's HTTP call as a client
        span, whose ``traceparent`` Cube is sent."""
        with trace.child("tenant slot", attributes={"cube.round": attempt}):
            release = await self._limiter.acquire(call.tenant.app_id)
        with trace.child(
            f"{call.method} /cubejs-api/v1/{call.endpoint}", CLIENT, _cube_attributes(call, attempt)
        ) as span:
            answer = await self._round(call, url, read_timeout, release, span.traceparent)
            if isinstance(answer, Buffered):
                span.set("http.response.status_code", answer.status)
                if answer.continue_wait:
                    span.set("cube.continue_wait", True)
                elif answer.status >= 400:
                    span.fail(str(answer.status))
            else:
                span.set("http.response.status_code", 200)
            return answer

    async def _round(
        self, call: UpstreamCall, url: str, read_timeout: float | None, release: Callable[[], None], trace: str | None
    ) -> CubeAnswer:
        """One round: Cube asked once in the tenant's slot ``release`` gives back (held until a stream is closed, else
        released here), with ``trace`` as its ``traceparent``; counted by outcome and timed."""
        asked = time.monotonic()
        try:
            answer = await self._cube.call(
                url,
                call.method,
                call.jwt,
                call.request_id,
                call.payload,
                read_timeout=read_timeout,
                need_whole=call.whole or call.fill is not None,
                parse=call.fill is not None,  # only the zero-fill reads the data itself
                traceparent=trace,
            )
        except ApiError as exc:
            outcome = "database_down" if exc.body.get("message") == DATABASE_UNAVAILABLE else None
            self._metrics.cube_call(
                call.endpoint,
                outcome or _FAULTS.get(exc.status, "error"),
                time.monotonic() - asked,
                call.tenant.cube_base_url,
            )
            release()
            raise
        except BaseException:
            release()
            raise
        if isinstance(answer, Streamed):
            outcome = "data"
        elif answer.continue_wait:
            outcome = "continue_wait"
        else:
            outcome = "data" if answer.status < 400 else "cube_4xx" if answer.status < 500 else "cube_5xx"
        self._metrics.cube_call(call.endpoint, outcome, time.monotonic() - asked, call.tenant.cube_base_url)
        if isinstance(answer, Streamed):
            answer.release = release  # held until the stream is closed
        else:
            release()
        return answer

    def _let_go(self, answer: Buffered) -> None:
        """Give back the whole-answers budget an answer held from its first byte (read whole: meta, a fill)."""
        if answer.held:
            self._cube.whole_budget.give(answer.held)
            answer.held = 0

    async def _fill_elsewhere(self, tenant: Tenant, plan: FillPlan, raw: bytes) -> bytes:
        """Parse, fill and serialise in the fill process, in the tenant's turn: the loop only copies the bytes."""
        if self._fills is None:
            return filled(plan, raw)
        try:
            return await self._fills.fill(tenant.app_id, plan, raw)
        except orjson.JSONDecodeError:
            raise ApiError(502, {"message": "Cube answered with a body that is not valid JSON"}) from None


def _cube_attributes(call: UpstreamCall, attempt: int) -> dict[str, str | int]:
    """A Cube round's span attributes (OpenTelemetry's HTTP client rule): the URL as it may be shown, never a key."""
    url = f"{call.tenant.shown_url}/cubejs-api/v1/{call.endpoint}"
    return {"http.request.method": call.method, "url.full": url, "cube.endpoint": call.endpoint, "cube.round": attempt}
