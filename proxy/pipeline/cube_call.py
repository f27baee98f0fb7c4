"""A load or dry-run's Cube call (the last part of step 3): signed now, coalesced, recorded in its exchange.

Rules it keeps: the JWT is signed for this call, carrying a minted GitLab token only for a
personal call, which is never coalesced (its key is None); identical calls in flight are one
Cube call (``Coalescer``); what Cube answered is recorded once, here, for the access line and
the metrics. Traced as ``cube <endpoint>``: a joined call links to the span of the call it joined.
"""

from __future__ import annotations

import time

from proxy.caching.coalesce import QueryAnswer, coalesce_key
from proxy.caching.verdict import ALONE, SHARED
from proxy.cube.client import Buffered
from proxy.cube.forward import UpstreamCall
from proxy.cube.tenants import Tenant
from proxy.cube.zerofill import fill_plan
from proxy.observe.tracing import Traced, error_of
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.request_body import QueryRequest
from proxy.pipeline.services import Services


async def ask_cube(
    services: Services,
    exchange: Exchange | None,
    tenant: Tenant,
    endpoint: str,
    query: QueryRequest,
    gitlab_token: str | None,
    request_id: str,
    under: Traced | None,
) -> QueryAnswer:
    """Cube's answer, coalesced with identical calls in flight (never a personal call's, one with a
    ``gitlab_token``); recorded in ``exchange`` (None: a background refresh of a stale cached answer, which no
    caller waits on). Traced under ``under``."""
    span = under.child(f"cube {endpoint}", attributes={"cube.endpoint": endpoint}) if under is not None else None
    call = UpstreamCall(
        tenant=tenant,
        endpoint=endpoint,
        method="POST",
        jwt=services.signer.sign(tenant, int(time.time()), gitlab_token),
        request_id=request_id,
        payload=query.payload,
        fill=fill_plan(query.query) if endpoint == "load" else None,
        traceparent=exchange.traceparent if exchange is not None else None,
        trace=span,
    )
    forwarder = services.forwarder
    asked = time.perf_counter()
    try:
        key = None if gitlab_token is not None else coalesce_key(tenant, endpoint, query.fingerprint)
        outcome, shared, origin = await services.coalescer.run(key, lambda: forwarder.fetch(call), span)
        if span is not None and shared:
            span.set("proxy.coalesced", True)
            if origin is not None:
                span.add_link(origin)
    except BaseException as exc:
        if span is not None:
            span.fail(*error_of(exc))
        raise
    finally:
        if exchange is not None:
            exchange.cube_seconds = time.perf_counter() - asked
        if span is not None:
            span.end()
    if exchange is not None:
        _record(services, exchange, tenant, outcome, shared)
    return outcome


def _record(services: Services, exchange: Exchange, tenant: Tenant, outcome: QueryAnswer, shared: bool) -> None:
    """What Cube's answer was, for the access line and the metrics."""
    exchange.cube_status = outcome.status if isinstance(outcome, Buffered) else 200
    exchange.cube_url = tenant.shown_url
    exchange.cache = SHARED if shared else ALONE
    metrics = services.metrics
    if shared:
        metrics.shared_calls += 1
        if (tally := exchange.tally) is not None:  # set by the authorisation
            tally.coalesced += 1
    else:
        metrics.own_calls += 1
