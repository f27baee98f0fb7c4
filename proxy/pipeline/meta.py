"""A tenant's meta answer (step 3 of a meta request, once the caller is authorised): from the meta cache or Cube.

Rules it keeps: Cube is asked for meta whole, through the tenant's slot, by at most one call
per tenant at a time (``MetaCache``); a Continue-wait or an error is answered as Cube gave it
and never kept; a hit records no Cube status nor time. Traced as ``meta cache``, Cube's call
as ``cube meta`` under it.
"""

from __future__ import annotations

import time

from proxy.caching.verdict import META_HIT, META_MISS
from proxy.cube.client import Buffered
from proxy.cube.forward import UpstreamCall
from proxy.cube.tenants import Tenant
from proxy.errors import ApiError
from proxy.observe.tracing import error_of
from proxy.pipeline.answers import ContinueWaitAnswer, kept_answer
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.services import Services


async def tenant_meta(services: Services, exchange: Exchange, tenant: Tenant) -> Buffered:
    """The tenant's meta for this exchange, recorded in it (cache verdict, Cube's status and time) and counted."""
    span = exchange.trace.child("meta cache") if exchange.trace is not None else None

    async def load_meta() -> Buffered:
        call = UpstreamCall(
            tenant=tenant,
            endpoint="meta",
            method="GET",
            jwt=services.signer.sign(tenant, int(time.time())),
            request_id=exchange.request_id,
            payload=None,
            whole=True,
            traceparent=exchange.traceparent,
            trace=span.child("cube meta", attributes={"cube.endpoint": "meta"}) if span is not None else None,
        )
        try:
            answer = await services.forwarder.fetch(call)
        finally:
            if call.trace is not None:
                call.trace.end()
        assert isinstance(answer, Buffered)  # meta is asked for whole (call.whole)
        if answer.continue_wait:
            raise ContinueWaitAnswer(answer)
        if answer.status != 200:
            body = answer.parsed if isinstance(answer.parsed, dict) else {"message": "Cube error"}
            raise ApiError(answer.status, body)
        return kept_answer(answer.status, answer.body)

    asked = time.perf_counter()
    try:
        answer, hit = await services.meta_cache.get(tenant, load_meta)
        if span is not None:
            span.set("proxy.cache.status", "HIT" if hit else "MISS")
    except ContinueWaitAnswer as cw:
        answer, hit = cw.answer, False
    except BaseException as exc:
        if span is not None:
            span.fail(*error_of(exc))
        raise
    finally:
        exchange.cube_seconds = time.perf_counter() - asked
        if span is not None:
            span.end()
    exchange.cache = META_HIT if hit else META_MISS
    if hit:  # Cube was not asked: no status, no time, no Cube
        exchange.cube_seconds = None
    else:
        exchange.cube_status = answer.status
        exchange.cube_url = tenant.shown_url
    tally = exchange.tally
    assert tally is not None  # set by the authorisation
    metrics = services.metrics
    if hit:
        metrics.meta_hits += 1
        tally.meta_hits += 1
    else:
        metrics.meta_misses += 1
        tally.meta_misses += 1
    return answer
