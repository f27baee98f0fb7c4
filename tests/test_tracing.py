"""Traces (``[tracing]``, docs/tracing.md): the spans both front doors make, as a real OTLP/HTTP receiver decodes."""

from __future__ import annotations

import asyncio
import socket

import pytest

from proxy.web.keys import PIPELINE
from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.fakes.cube import chunked, continue_wait_then, held_until
from tests.support.otlp_receiver import one, tree
from tests.support.sessions import browser
from tests.support.waiting import until
from tests.support.wire import HEAD, TAIL

LOAD = "/api/v4/projects/1/product_analytics/request/load"
SERVER_SPAN = "POST /api/v4/projects/{project}/product_analytics/request/load"
ROUND = "POST /cubejs-api/v1/load"
#: the GitLab calls a token's first authorisation makes (tests/fakes/gitlab.py answers them as GitLab does)
GITLAB_CALLS = [
    {"GET /api/v4/user": []},
    {"GET /api/v4/personal_access_tokens/self": []},
    {"GET /api/v4/projects/{id}": []},
    {"GET /api/v4/projects/{id}/members/all/{user_id}": []},
]
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def traced_settings(make_settings, collector):
    def make(**sections):
        tracing = {"enabled": True, "endpoint": collector.url, "export_delay": 60.0, **sections.pop("tracing", {})}
        return make_settings(tracing=tracing, **sections)

    return make


@pytest.fixture
async def traced(traced_settings, make_client):
    return await make_client(traced_settings())


async def sent(client) -> None:
    """Everything the client's proxy ended so far, sent to the collector (flushed on a thread: the loop answers it)."""
    tracing = client.server.app[PIPELINE].tracing
    assert await asyncio.to_thread(tracing.flush, 10), "the flush did not finish"


async def test_a_plain_load_is_one_trace_from_the_server_span_to_cubes_round(traced, cube, collector):
    resp = await traced.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200
    await sent(traced)
    spans = collector.spans
    server = one(spans, SERVER_SPAN)
    assert server.kind == "server" and server.parent_id == "" and not server.error
    assert tree(spans, server) == {
        SERVER_SPAN: [
            {"credential": GITLAB_CALLS},
            {"cube load": [{"tenant slot": []}, {ROUND: []}]},
        ]
    }
    assert {span.trace_id for span in spans} == {server.trace_id}
    attributes = server.attributes
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/api/v4/projects/{project}/product_analytics/request/load"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gitlab.project.id"] == 1
    assert attributes["proxy.request_id"] == resp.headers["X-Request-Id"]
    assert attributes["client.address"] == "127.0.0.1"
    assert server.resource["service.name"] == "product-analytics-proxy"
    cube_round = one(spans, ROUND)
    assert cube_round.kind == "client"
    assert cube_round.attributes["http.response.status_code"] == 200
    assert cube_round.attributes["cube.round"] == 1
    # Cube's request carries the round's span: the same trace, that span as its parent
    assert cube.calls[0].headers["traceparent"] == f"00-{server.trace_id}-{cube_round.span_id}-01"
    user = one(spans, "GET /api/v4/user")
    assert user.kind == "client" and user.attributes["http.response.status_code"] == 200
    assert one(spans, "credential").attributes["proxy.auth.cached"] is False


async def test_a_warm_credential_makes_no_gitlab_span(traced, collector):
    for _ in range(2):
        assert (await traced.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    await sent(traced)
    credentials = [span for span in collector.spans if span.name == "credential"]
    assert [span.attributes["proxy.auth.cached"] for span in credentials] == [False, True]
    second = credentials[1]
    assert not [span for span in collector.spans if span.parent_id == second.span_id]


async def test_a_joined_call_links_to_the_call_it_joined(traced, cube, collector):
    release = asyncio.Event()
    cube.behaviour = held_until(release)
    coalescer = traced.server.app[PIPELINE].services.coalescer
    first = asyncio.ensure_future(traced.post(LOAD, json={"query": QUERY}, headers=REPORTER))
    await until(lambda: coalescer.waiting() == 1)
    second = asyncio.ensure_future(traced.post(LOAD, json={"query": QUERY}, headers=REPORTER))
    await until(lambda: coalescer.waiting() == 2)
    release.set()
    assert [(await first).status, (await second).status] == [200, 200]
    await sent(traced)
    calls = [span for span in collector.spans if span.name == "cube load"]
    assert len(calls) == 2
    [leader] = [span for span in calls if "proxy.coalesced" not in span.attributes]
    [joined] = [span for span in calls if span.attributes.get("proxy.coalesced") is True]
    assert joined.links == [(leader.trace_id, leader.span_id)]
    assert joined.trace_id != leader.trace_id  # two requests, two traces
    assert len([span for span in collector.spans if span.name == ROUND]) == 1  # one Cube call, made by the leader
    assert one(collector.spans, ROUND).parent_id == leader.span_id
    assert len(cube.calls) == 1


async def test_a_cached_answer_shows_its_hit_and_no_cube_call(traced_settings, make_client, cube, collector):
    client = await make_client(traced_settings(product_analytics={"answer_ttl": 30.0}))
    for _ in range(2):
        assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    await sent(client)
    caches = sorted((span for span in collector.spans if span.name == "answer cache"), key=lambda s: s.start)
    assert [span.attributes["proxy.cache.status"] for span in caches] == ["MISS", "HIT"]
    miss, hit = caches
    assert [span.name for span in collector.spans if span.parent_id == miss.span_id] == ["cube load"]
    assert [span.name for span in collector.spans if span.parent_id == hit.span_id] == []
    servers = [span for span in collector.spans if span.name == SERVER_SPAN]
    assert sorted(span.attributes["proxy.cache"] for span in servers) == ["hit", "miss"]
    assert len(cube.calls) == 1


async def test_each_continue_wait_round_is_its_own_span(traced, cube, collector):
    cube.behaviour = continue_wait_then([2])
    assert (await traced.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    await sent(traced)
    call = one(collector.spans, "cube load")
    under = sorted((span for span in collector.spans if span.parent_id == call.span_id), key=lambda s: s.start)
    assert [span.name for span in under] == ["tenant slot", ROUND] * 3
    rounds = [span for span in under if span.name == ROUND]
    assert [span.attributes["cube.round"] for span in rounds] == [1, 2, 3]
    assert [span.attributes.get("cube.continue_wait", False) for span in rounds] == [True, True, False]
    # each round told Cube its own span
    assert [c.headers["traceparent"].split("-")[2] for c in cube.calls] == [span.span_id for span in rounds]


async def test_a_gitlab_failure_marks_the_spans_it_broke(traced, gitlab, collector):
    gitlab.fail_with = 500
    resp = await traced.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 503
    await sent(traced)
    server = one(collector.spans, SERVER_SPAN)
    assert server.error and server.attributes["error.type"] == "503"
    assert server.attributes["http.response.status_code"] == 503
    credential = one(collector.spans, "credential")
    assert credential.error and credential.attributes["error.type"] == "503"
    user = one(collector.spans, "GET /api/v4/user")
    assert user.error and user.attributes["error.type"] == "500"
    assert user.attributes["http.response.status_code"] == 500


async def test_a_refusal_is_not_a_server_error(traced, collector):
    resp = await traced.post(LOAD, json={"query": QUERY}, headers={"PRIVATE-TOKEN": "glpat-nobody-00000000000"})
    assert resp.status == 401
    await sent(traced)
    server = one(collector.spans, SERVER_SPAN)
    assert server.attributes["http.response.status_code"] == 401
    assert not server.error  # OpenTelemetry's HTTP rule: a 4xx is the caller's, not the server's, failure
    assert one(collector.spans, "credential").error  # the step it failed in says why


async def test_a_trusted_callers_traceparent_is_continued(traced, cube, collector):
    parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    headers = {**REPORTER, "traceparent": parent, "tracestate": "vendor=opaque"}
    assert (await traced.post(LOAD, json={"query": QUERY}, headers=headers)).status == 200
    await sent(traced)
    server = one(collector.spans, SERVER_SPAN)
    assert (server.trace_id, server.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    assert cube.calls[0].headers["traceparent"].startswith(f"00-{CALLER_TRACE}-")
    assert {span.trace_id for span in collector.spans} == {CALLER_TRACE}


async def test_a_sampled_out_callers_trace_is_not_recorded_but_still_reaches_cube(traced, cube, collector):
    parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"  # the caller chose not to record this trace
    assert (await traced.post(LOAD, json={"query": QUERY}, headers={**REPORTER, "traceparent": parent})).status == 200
    await sent(traced)
    assert collector.spans == []
    assert cube.calls[0].headers["traceparent"].startswith(f"00-{CALLER_TRACE}-")
    assert cube.calls[0].headers["traceparent"].endswith("-00")


def _outside_address() -> str:
    """An address of this machine's that is not loopback (the route to a documentation network tells it; no packet
    is sent), so a connection from it is a stranger's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "this machine has no address but loopback"
    return str(address)


async def test_a_strangers_traceparent_starts_a_new_trace(traced_settings, make_client, cube, collector, access_lines):
    client = await make_client(traced_settings(), host=_outside_address())
    parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert (await client.post(LOAD, json={"query": QUERY}, headers={**REPORTER, "traceparent": parent})).status == 200
    await sent(client)
    server = one(collector.spans, SERVER_SPAN)
    assert server.trace_id != CALLER_TRACE and server.parent_id == ""
    assert cube.calls[0].headers["traceparent"].startswith(f"00-{server.trace_id}-")
    [line] = [line for line in access_lines() if line["route"] == server.attributes["http.route"]]
    assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)  # the line finds its trace


async def test_a_trusted_proxys_traceparent_is_continued(traced_settings, make_client, collector):
    address = _outside_address()
    client = await make_client(traced_settings(server={"trusted_proxies": [f"{address}/32"]}), host=address)
    parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert (await client.post(LOAD, json={"query": QUERY}, headers={**REPORTER, "traceparent": parent})).status == 200
    await sent(client)
    assert one(collector.spans, SERVER_SPAN).trace_id == CALLER_TRACE


async def test_no_secret_reaches_a_span(traced_settings, make_client, gitlab, cube, collector, tmp_path):
    secret_file = tmp_path / "otlp-headers"  # as a mounted Secret holds it
    secret_file.write_text("x-collector-key=collector-secret-0001\n")
    client = await make_client(traced_settings(tracing={"headers_file": str(secret_file)}))
    marker = "a-filter-value-only-the-query-holds"
    query = {**QUERY, "filters": [{"member": "TrackedEvents.eventName", "operator": "equals", "values": [marker]}]}
    session = gitlab.sign_in(1)
    callers = [REPORTER, {"Authorization": f"Bearer {REPORTER['PRIVATE-TOKEN']}"}, browser(gitlab, session)]
    for headers in callers:
        assert (await client.post(LOAD, json={"query": query}, headers=headers)).status == 200
    resp = await client.post(LOAD + "?private_token=glpat-reporter-0000000001", json={"query": query})
    assert resp.status == 200
    await sent(client)
    assert len([span for span in collector.spans if span.name == SERVER_SPAN]) == 4
    secrets = [
        REPORTER["PRIVATE-TOKEN"],
        session,
        browser(gitlab, session)["X-CSRF-Token"],
        gitlab.csrf_token(session),
        marker,
        CUBE_KEY,
        *(call.headers["Authorization"] for call in cube.calls),  # the JWTs
        "collector-secret-0001",
    ]
    sent_bytes = b"".join(collector.bodies)
    for secret in secrets:
        assert secret.encode() not in sent_bytes
    # the collector's own header is sent to it, and only to it
    assert all(headers.get("x-collector-key") == "collector-secret-0001" for headers in collector.headers)
    assert "collector-secret-0001" not in str([call.headers for call in cube.calls])


async def test_a_collector_that_does_not_answer_costs_callers_nothing(traced_settings, make_client, collector):
    collector.hold = asyncio.Event()  # every export waits until the test's end
    client = await make_client(traced_settings(tracing={"queue_size": 8, "batch_size": 4, "export_delay": 0.01}))
    try:
        # the exporter's batches are stuck at the collector; the callers go on, and the queue stays bounded
        for _ in range(12):
            assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
        counts = client.server.app[PIPELINE].services.metrics.trace_spans
        assert counts.dropped > 0  # the queue held 8 at most: the rest were dropped, not kept
        assert counts.sent == 0
        metrics = await (await client.get("/-/metrics")).text()
        [dropped] = [
            line for line in metrics.splitlines() if line.startswith('pa_proxy_trace_spans_total{outcome="dropped"}')
        ]
        assert float(dropped.split()[-1]) > 0
    finally:
        collector.hold.set()


async def test_a_dead_collector_costs_callers_nothing(make_settings, make_client):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tracing = {"enabled": True, "endpoint": f"http://127.0.0.1:{port}/v1/traces", "export_timeout": 0.5}
    client = await make_client(make_settings(tracing={**tracing, "export_delay": 60.0}))
    for _ in range(3):
        assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    tracing_ = client.server.app[PIPELINE].tracing
    assert await asyncio.to_thread(tracing_.flush, 10)
    counts = client.server.app[PIPELINE].services.metrics.trace_spans
    assert counts.unsent > 0 and counts.sent == 0


async def test_a_zero_fill_and_a_relay_are_spans_of_their_own(traced_settings, make_client, cube, collector):
    client = await make_client(traced_settings(cube={"buffer_limit": 64, "continue_wait_budget": 0.0}))
    day = "TrackedEvents.derivedTstamp"
    query = {
        "measures": ["TrackedEvents.count"],
        "timeDimensions": [{"dimension": day, "granularity": "day"}],
        "filters": [{"member": day, "operator": "inDateRange", "values": ["2026-11-01", "2026-11-04"]}],
    }
    cube.rows = [{f"{day}.day": "2026-11-02T00:00:00.000", day: "2026-11-02T00:00:00.000", "TrackedEvents.count": "3"}]
    assert (await client.post(LOAD, json={"query": query}, headers=REPORTER)).status == 200
    rest_may_come = asyncio.Event()
    cube.behaviour = chunked([HEAD + b" " * 100, TAIL], between=rest_may_come)  # past buffer_limit: streamed
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200 and await resp.content.readexactly(len(HEAD)) == HEAD
    rest_may_come.set()
    assert (await resp.read()).endswith(TAIL)
    await sent(client)
    fill = one(collector.spans, "zero-fill")
    assert fill.attributes == {"proxy.fill.where": "loop", "proxy.fill.days": 4}
    assert fill.parent_id in {span.span_id for span in collector.spans if span.name == "cube load"}
    relay = one(collector.spans, "relay")
    streamed = next(span for span in collector.spans if span.span_id == relay.parent_id)
    assert streamed.name == SERVER_SPAN and relay.attributes["proxy.bytes_sent"] > 64 and not relay.error


@pytest.mark.handed_over  # GET: the lane serves POST only
async def test_meta_shows_its_cache(traced, cube, collector):
    meta = "/api/v4/projects/1/product_analytics/request/meta"
    for _ in range(2):
        assert (await traced.get(meta, headers=REPORTER)).status == 200
    await sent(traced)
    caches = sorted((span for span in collector.spans if span.name == "meta cache"), key=lambda s: s.start)
    assert [span.attributes["proxy.cache.status"] for span in caches] == ["MISS", "HIT"]
    assert tree(collector.spans, caches[0]) == {
        "meta cache": [{"cube meta": [{"tenant slot": []}, {"GET /cubejs-api/v1/meta": []}]}]
    }
    assert tree(collector.spans, caches[1]) == {"meta cache": []}


async def test_a_personal_calls_token_minting_is_a_gitlab_span(traced, cube, collector):
    maintainer = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}
    resp = await traced.post(LOAD, json={"query": QUERY, "include_token": True}, headers=maintainer)
    assert resp.status == 200
    await sent(traced)
    server = one(collector.spans, SERVER_SPAN)
    minted = one(collector.spans, "POST /api/v4/projects/{id}/access_tokens")
    assert minted.parent_id == server.span_id and minted.attributes["http.response.status_code"] == 201


async def test_a_new_trace_past_the_ratio_makes_no_span_but_a_callers_sampled_trace_is_followed(
    traced_settings, make_client, cube, collector
):
    client = await make_client(traced_settings(tracing={"sample_ratio": 0.0}))
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"  # a trusted (loopback) caller that records this trace
    assert (await client.post(LOAD, json={"query": QUERY}, headers={**REPORTER, "traceparent": parent})).status == 200
    await sent(client)
    assert "traceparent" not in cube.calls[0].headers  # not recorded: the call goes as it does with tracing off
    assert {span.trace_id for span in collector.spans} == {CALLER_TRACE}  # parent-based: the caller's decision
    assert one(collector.spans, SERVER_SPAN).parent_id == CALLER_SPAN
