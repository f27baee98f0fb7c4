"""Metrics, the status page, readiness and the access line, through both front doors (the ``client`` fixture).

Metric values are read back from ``/-/metrics`` as Prometheus reads them
(``prometheus_client.parser``), never from the proxy's own objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from proxy.observe.metrics import Metrics
from proxy.observe.store import merge, read_snapshots, retire, write_snapshot
from proxy.pipeline.client_info import client_address, traceparent, trusted_networks
from proxy.web.keys import PIPELINE
from tests.conftest import MAINTAINER, QUERY, REPORTER, SIGNING_KEY, replace
from tests.fakes.cube import continue_wait_then, held_until
from tests.support.metrics import scrape, value
from tests.support.wire import LOAD_ROUTE

LOAD = "/api/v4/projects/1/product_analytics/request/load"
META = "/api/v4/projects/1/product_analytics/request/meta"
ADMIN = {"PRIVATE-TOKEN": "glpat-admin-000000000003"}
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def load(client, query=QUERY, headers=REPORTER, **kw):
    return await client.post(LOAD, json={"query": query}, headers=headers, **kw)


async def test_requests_cube_and_gitlab_calls_are_counted(client, cube, gitlab, serving):
    for n in range(3):
        assert (await load(client, {**QUERY, "limit": n + 1})).status == 200
    assert (await client.post(META, json={}, headers=REPORTER)).status == 200
    assert (await client.post(META, json={}, headers=REPORTER)).status == 200
    assert (await load(client, headers={})).status == 401
    found = await scrape(client)
    assert value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="200") == 3
    assert value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="401") == 1
    assert value(found, "pa_proxy_request_duration_seconds_count", route=LOAD_ROUTE, code_class="2xx") == 3
    assert value(found, "pa_proxy_request_duration_seconds_count", route=LOAD_ROUTE, code_class="4xx") == 1
    assert value(found, "pa_proxy_cube_calls_total", endpoint="load", outcome="data") == 3
    assert value(found, "pa_proxy_cube_calls_total", endpoint="meta", outcome="data") == 1
    assert value(found, "pa_proxy_cube_call_duration_seconds_count", endpoint="load") == 3
    assert value(found, "pa_proxy_meta_cache_total", result="hit") == 1
    assert value(found, "pa_proxy_meta_cache_total", result="miss") == 1
    assert value(found, "pa_proxy_query_callers_total", call="own") == 3
    assert value(found, "pa_proxy_gitlab_calls_total", endpoint="user", code="200") == gitlab.calls["/api/v4/user"] == 1
    assert value(found, "pa_proxy_gitlab_call_duration_seconds_count", endpoint="member") == 1
    assert value(found, "pa_proxy_auth_cache_total", result="miss") == 1
    assert value(found, "pa_proxy_auth_cache_total", result="hit") >= 3
    assert value(found, "pa_proxy_requests_in_flight") == 1  # the scrape itself
    assert value(found, "pa_proxy_cube_pool_connections", state="open") >= 1
    served = value(found, "pa_proxy_lane_requests_total", outcome="served")
    # the three loads; meta hands its connection to aiohttp, which then serves the refused load on it too
    assert served == (3 if serving == "fast_lane" else 0)
    build = [k for k in found if k[0] == "pa_proxy_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"] and dict(build[0][1])["revision"] == "unknown"
    assert [k for k in found if k[0] == "process_resident_memory_bytes"]


async def test_bytes_sent_are_the_answers_bodies(client, cube):
    first = await load(client)
    body = await first.read()
    refused = await load(client, headers={})
    refused_body = await refused.read()
    found = await scrape(client)
    assert value(found, "pa_proxy_response_bytes_total", route=LOAD_ROUTE) == len(body) + len(refused_body)


async def test_refusals_continue_wait_rounds_shared_calls_and_tenant_waits_are_counted(make_client, settings, cube):
    client = await make_client(
        replace(
            replace(settings, "limits", rate_limit=1.0, rate_limit_burst=6),
            "cube",
            max_concurrent_per_tenant=1,
        )
    )
    cube.behaviour = continue_wait_then([2])
    assert (await load(client)).status == 200  # Cube said Continue wait twice, then data
    release = asyncio.Event()
    cube.behaviour = held_until(release)
    shared = [asyncio.ensure_future(load(client, {**QUERY, "limit": 7})) for _ in range(2)]
    other = asyncio.ensure_future(load(client, {**QUERY, "limit": 8}))  # waits for the tenant's one slot
    while len(cube.calls) < 4:
        await asyncio.sleep(0)
    release.set()
    assert [r.status for r in await asyncio.gather(*shared, other)] == [200, 200, 200]
    statuses = [(await load(client)).status for _ in range(4)]
    assert 429 in statuses
    found = await scrape(client)
    assert value(found, "pa_proxy_cube_continue_wait_rounds_total", endpoint="load") == 2
    assert value(found, "pa_proxy_cube_calls_total", endpoint="load", outcome="continue_wait") == 2
    assert value(found, "pa_proxy_query_callers_total", call="shared") == 1
    assert value(found, "pa_proxy_tenant_cap_waits_total") >= 1
    assert value(found, "pa_proxy_refused_total", reason="rate_limited") == statuses.count(429)


async def test_the_project_label_is_off_by_default_and_capped_when_on(make_client, settings, cube):
    client = await make_client(replace(settings, "server", metrics_project_label=True, metrics_max_projects=1))
    assert (await load(client)).status == 200
    assert (await client.post(LOAD.replace("/1/", "/2/"), json={"query": QUERY}, headers=MAINTAINER)).status == 200
    found = await scrape(client)
    assert value(found, "pa_proxy_project_requests_total", project="1", outcome="ok") == 1
    assert value(found, "pa_proxy_project_requests_total", project="other", outcome="ok") == 1


async def test_no_project_label_by_default(client, cube):
    assert (await load(client)).status == 200
    assert not [k for k in await scrape(client) if k[0].startswith("pa_proxy_project_requests")]


async def test_metrics_on_a_metrics_port_are_not_on_the_public_listener(make_client, settings, cube):
    client = await make_client(replace(settings, "server", metrics_port=1))  # a port this test server is not on
    assert (await load(client)).status == 200
    assert (await client.get("/-/metrics")).status == 404


# -- the status page ----------------------------------------------------------------------------


async def test_status_answers_loopback_callers_with_json_or_html(client, cube):
    assert (await load(client)).status == 200
    resp = await client.get("/-/status", headers={"Accept": "application/json"})
    assert resp.status == 200
    report = await resp.json()
    assert report["requests"]["total"] == 1 and report["workers"] == 1
    assert report["tenants"][0]["project"] == "1" and report["tenants"][0]["requests"] == 1
    assert report["cubes"][0]["ready"] is True and report["cubes"][0]["calls"] == 1
    assert report["gitlab"]["calls"] >= 1 and report["gitlab"]["auth_cache"]["misses"] == 1
    assert report["settings"]["product_analytics"]["cube_api_key"] == "[REDACTED]"
    page = await client.get("/-/status")
    assert page.content_type == "text/html" and "default-src 'none'" in page.headers["Content-Security-Policy"]
    text = await page.text()
    assert "[REDACTED]" in text and "test-cube-api-key" not in text


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 404), (REPORTER, 404), ({"PRIVATE-TOKEN": "glpat-nobody-000000001"}, 404), (ADMIN, 200)],
)
async def test_off_loopback_only_a_gitlab_admin_sees_the_status(make_client, settings, cube, headers, status):
    # with a metrics port, loopback callers on the public listener count as anyone: only an admin is let in
    client = await make_client(replace(settings, "server", metrics_port=1))
    assert (await load(client)).status == 200
    resp = await client.get("/-/status", headers={**headers, "Accept": "application/json"})
    assert resp.status == status
    body = await resp.text()
    if status == 404:
        assert "requests" not in body and "cube" not in body.lower()


# -- readiness ------------------------------------------------------------------------------------


@pytest.mark.handed_over
async def test_one_dead_tenant_cube_is_counted_but_does_not_fail_readiness(make_settings, make_client, cube_url):
    """The public probe counts the Cubes up and down and names none (their hosts and paths are the status page's,
    which is protected: it names the dead one)."""
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    settings = make_settings(projects={"7": {"cube_api_base_url": dead, "cube_api_key": "k" * 40}})
    client = await make_client(settings)
    resp = await client.get("/-/readiness")
    body = await resp.json()
    assert resp.status == 200 and body == {"cubes": {"up": 1, "down": 1}, "status": "ready"}
    text = await resp.text()
    assert "127.0.0.1" not in text and cube_url not in text
    status = await client.get("/-/status", headers={"Accept": "application/json"})  # loopback: allowed
    assert {c["url"]: c["ready"] for c in (await status.json())["cubes"]} == {cube_url: True, dead: False}


@pytest.mark.handed_over
async def test_readiness_fails_when_every_cube_is_down_or_the_proxy_is_draining(make_client, settings, cube):
    client = await make_client(settings)
    assert (await client.get("/-/readiness")).status == 200
    cube.ready = False
    resp = await client.get("/-/readiness")
    assert resp.status == 503 and (await resp.json())["cubes"] == {"up": 0, "down": 1}
    cube.ready = True
    client.server.app[PIPELINE].drain()
    resp = await client.get("/-/readiness")
    assert (resp.status, (await resp.json())["status"]) == (503, "shutting down")


@pytest.mark.handed_over
async def test_readiness_can_also_need_gitlab(make_client, settings, gitlab):
    client = await make_client(replace(settings, "gitlab", ready_check=True))
    resp = await client.get("/-/readiness")
    assert resp.status == 200 and (await resp.json())["gitlab"] == "up"
    gitlab.fail_with = 502
    down = await make_client(replace(settings, "gitlab", ready_check=True))
    resp = await down.get("/-/readiness")
    assert resp.status == 503 and (await resp.json())["gitlab"] == "down"


# -- the access line ------------------------------------------------------------------------------


async def test_access_lines_carry_what_an_operator_needs(client, cube, access_lines):
    resp = await load(client, headers={**REPORTER, "User-Agent": "dashboards/1.0", "traceparent": TRACE})
    body = await resp.read()
    assert (await load(client, headers={**REPORTER, "traceparent": "00-nope"})).status == 200
    first, second = access_lines()[-2:]
    assert first["client"] == "127.0.0.1" and first["user_agent"] == "dashboards/1.0"
    assert first["bytes"] == len(body) and first["user_id"] == 1 and first["project"] == 1
    assert first["cube_status"] == 200 and first["cube_ms"] >= 0 and first["cache"] == "miss"
    trace_id, span_id = TRACE.split("-")[1:3]
    assert (first["trace_id"], first["span_id"]) == (trace_id, span_id)
    assert second["trace_id"] is None and second["span_id"] is None
    assert first["pid"] == os.getpid()
    assert first["request_bytes"] == len(json.dumps({"query": QUERY}))  # as aiohttp's client sent it
    assert first["cube"] == client.server.app[PIPELINE].settings.product_analytics.cube_api_base_url
    assert first["path"] is None  # routed: the route template says where
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-12-01T19:50:01.123Z")
    # the trace crosses the proxy: Cube got the caller's traceparent, and nothing for an invalid one
    assert cube.calls[0].headers["traceparent"] == TRACE and "traceparent" not in cube.calls[1].headers


async def test_the_client_address_comes_from_trusted_proxies_only(make_client, settings, cube, access_lines):
    forwarded = {**REPORTER, "X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    untrusting = await make_client(settings)
    assert (await load(untrusting, headers=forwarded)).status == 200
    trusting = await make_client(replace(settings, "server", trusted_proxies=("127.0.0.0/8",)))
    assert (await load(trusting, headers=forwarded)).status == 200
    lines = access_lines()
    assert [line["client"] for line in lines[-2:]] == ["127.0.0.1", "198.51.100.7"]


@pytest.mark.handed_over
async def test_probes_are_logged_at_debug(make_client, settings, caplog, capsys):
    client = await make_client(settings)
    caplog.set_level(logging.INFO, logger="proxy.access")
    assert (await client.get("/-/liveness")).status == 200
    assert "/-/liveness" not in capsys.readouterr().err
    caplog.set_level(logging.DEBUG, logger="proxy.access")
    assert (await client.get("/-/readiness")).status == 200
    assert '"level":"DEBUG"' in capsys.readouterr().err


# -- the pure parts -------------------------------------------------------------------------------


def test_client_address_believes_only_hops_added_by_trusted_proxies():
    trusted = trusted_networks(["10.0.0.0/8", "::1"])
    assert client_address("192.0.2.1", "203.0.113.9", trusted) == "192.0.2.1"  # an untrusted peer: its own address
    assert client_address("10.1.1.1", "203.0.113.9, 10.2.2.2", trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", "1.1.1.1, 203.0.113.9", trusted) == "203.0.113.9"  # the left part is forged
    assert client_address("10.1.1.1", "garbage, 10.2.2.2", trusted) == "10.2.2.2"
    assert client_address("::1", "[2001:db8::1]:443", trusted) == "2001:db8::1"
    assert client_address("10.1.1.1", "203.0.113.9:5555", trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", None, trusted) == "10.1.1.1"
    assert client_address(None, "203.0.113.9", trusted) is None
    assert client_address("10.1.1.1", "203.0.113.9", ()) == "10.1.1.1"


def test_traceparent_accepts_w3c_trace_context_only():
    assert traceparent(TRACE) == TRACE
    assert traceparent(f"01-{TRACE[3:]}-extra") == f"01-{TRACE[3:]}"  # a later version may add fields
    for bad in ("00-nope", TRACE.upper(), "ff" + TRACE[2:], f"00-{'0' * 32}-00f067aa0ba902b7-01", TRACE + "-x", None):
        assert traceparent(bad) is None


def test_worker_snapshots_add_up_and_a_dead_workers_counts_stay(tmp_path):
    one, two = Metrics(), Metrics()
    for metrics, n in ((one, 2), (two, 3)):
        for _ in range(n):
            metrics.in_flight += 1
            metrics.request_finished("/r", "POST", 200, 0.01, 10)
        metrics.in_flight += 1  # one still in flight
        metrics.project(1).requests += n
    first, second = one.snapshot(), two.snapshot()
    first["pid"], second["pid"] = 1001, 1002
    write_snapshot(tmp_path, first)
    write_snapshot(tmp_path, second)
    merged = merge(read_snapshots(tmp_path), alive=lambda pid: True)
    assert merged["requests"] == [["/r", "POST", 200, 5]] and merged["gauges"]["in_flight"] == 2
    assert merged["latency"][0][:2] == ["/r", "2xx"] and merged["latency"][0][2][1] == 5
    assert merged["projects"][0][1] == 5
    retire(tmp_path, 1001)  # worker 1001 died: its counts move to retired.json, its gauges go
    merged = merge(read_snapshots(tmp_path), alive=lambda pid: pid == 1002)
    assert merged["requests"] == [["/r", "POST", 200, 5]] and merged["gauges"]["in_flight"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retired.json", "worker-1002.json"]


def test_a_scrape_between_the_two_steps_of_a_retire_counts_the_worker_once(tmp_path):
    """The parent writes ``retired.json`` naming the dead worker, then removes its file: a scrape in between sees
    its counts once, a retire cut short after its first step and run again adds nothing, and a new worker that
    is given the dead one's pid is counted (a worker is named by pid and start time)."""
    dead = Metrics()
    for _ in range(3):
        dead.request_finished("/r", "POST", 200, 0.01, 10)
    snapshot = dead.snapshot()
    snapshot["pid"] = 1001
    write_snapshot(tmp_path, snapshot)
    kept = (tmp_path / "worker-1001.json").read_bytes()
    retire(tmp_path, 1001)
    (tmp_path / "worker-1001.json").write_bytes(kept)  # as if the parent stopped between its two steps
    assert merge(read_snapshots(tmp_path), alive=lambda pid: False)["requests"] == [["/r", "POST", 200, 3]]
    retire(tmp_path, 1001)  # the retire run again: the file goes, nothing is added twice
    assert merge(read_snapshots(tmp_path), alive=lambda pid: False)["requests"] == [["/r", "POST", 200, 3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retired.json"]
    reborn = Metrics()
    reborn.started = snapshot["started"] + 1.0
    reborn.request_finished("/r", "POST", 200, 0.01, 10)
    again = reborn.snapshot()
    again["pid"] = 1001  # the kernel gave the pid out again
    write_snapshot(tmp_path, again)
    assert merge(read_snapshots(tmp_path), alive=lambda pid: True)["requests"] == [["/r", "POST", 200, 4]]


def test_project_tallies_are_capped():
    metrics = Metrics(max_projects=2)
    for project in (1, 2, 3, 4):
        metrics.project(project).requests += 1
    assert {key: tally.requests for key, tally in metrics.projects.items()} == {1: 1, 2: 1, "other": 2}


@pytest.mark.handed_over  # odd methods are aiohttp's to answer
async def test_a_callers_method_tokens_do_not_become_labels(client):
    for method in ("PROPFIND", "MKCOL", "LOCK", "SEARCH"):  # methods the HTTP parser knows, the proxy does not
        assert (await client.request(method, "/-/nowhere")).status in {404, 405}
    found = await scrape(client)
    methods = {dict(labels)["method"] for name, labels in found if name == "pa_proxy_requests_total"}
    assert methods == {"other"}  # the scrape's own GET is counted only after it answered


async def test_while_draining_every_answer_says_connection_close(client, cube):
    """From SIGTERM on (the pipeline draining), both doors move their callers on: the lane and aiohttp alike."""
    assert (await load(client)).headers.get("Connection") != "close"
    client.server.app[PIPELINE].drain()
    resp = await load(client)
    assert resp.status == 200 and resp.headers["Connection"] == "close"


@pytest.mark.handed_over  # a probe: aiohttp's
async def test_every_key_a_worker_writes_is_declared_and_merged(make_client, make_settings):
    """A key a worker's snapshot has and no declaration names would be dropped from every scrape silently: the
    snapshot a real app writes (its Health's counters and gauges included) and the parent's events hold only
    declared keys (``proxy/observe/families.py``), and the merge adds up each of them."""
    from proxy.observe import families, store

    client = await make_client(make_settings(redis={"url": "redis://127.0.0.1:1/0", "signing_key": SIGNING_KEY}))
    await client.get("/-/liveness")
    pipeline = client.app[PIPELINE]
    snapshot = pipeline.metrics.snapshot(gauges=pipeline.health.gauges(), counters=pipeline.health.counters())
    snapshot |= {"slot": 0, "cube_up": pipeline.health.cube_up()}
    snapshot |= {families.RELOADS.key: [["ok", 1]], families.WORKER_RESTARTS.key: [["killed", 1]]}  # the parent's
    assert families.undeclared(snapshot) == set()
    gauges = {f.key for f in families.FAMILIES if f.kind == families.GAUGE and not f.values} | {
        families.gauge_key(f, v) for f in families.FAMILIES for v in f.values
    }
    assert set(snapshot["gauges"]) <= gauges, set(snapshot["gauges"]) - gauges
    assert {families.SHARED_DEGRADED.key, families.gauge_key(families.CONNECTIONS, "lane")} <= set(snapshot["gauges"])
    merged = store.merge([snapshot], alive=lambda pid: True)
    for key in set(snapshot) & {*families.COUNTED, *families.TIMED}:
        assert merged[key] == snapshot[key] or sorted(merged[key]) == sorted(snapshot[key]), key
    assert families.undeclared({**snapshot, "a_new_counter": [["x", 1]]}) == {"a_new_counter"}
