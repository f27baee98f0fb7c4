"""Metrics and access lines that stay true: 499 for a caller who hangs up, the new saturation and lifecycle
metrics, the access line's fields, and every stderr line JSON. Both doors where HTTP is involved."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest

from tests.conftest import QUERY, REPORTER, replace
from tests.fakes.cube import held_until
from tests.support.metrics import scrape, value

LOAD = "/api/v4/projects/1/product_analytics/request/load"
LOAD_ROUTE = "/api/v4/projects/{project}/product_analytics/request/load"
META = "/api/v4/projects/1/product_analytics/request/meta"


async def until(condition, what: str, tries: int = 100):
    """Poll ``condition()`` (a record of the server's, not a time) on the event loop, boundedly."""
    for _ in range(tries):
        found = condition()
        if found:
            return found
        await asyncio.sleep(0.05)  # polling interval, bounded by ``tries``
    raise AssertionError(f"never happened: {what}")


async def test_a_caller_who_hangs_up_is_499_not_a_server_error(client, cube, access_lines):
    release = asyncio.Event()
    cube.behaviour = held_until(release)
    body = orjson.dumps({"query": QUERY})
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST {LOAD} HTTP/1.1\r\nHost: p\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await cube.arrived.wait()  # the call reached Cube; the caller goes away before the answer
    writer.close()
    line = await until(lambda: [e for e in access_lines() if e.get("route") == LOAD_ROUTE], "the access line")
    release.set()
    assert line[-1]["status"] == 499
    found = await scrape(client)
    assert value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="499") == 1
    assert value(found, "pa_proxy_request_duration_seconds_count", route=LOAD_ROUTE, code_class="5xx") == 0


@pytest.mark.handed_over  # unrouted, and meta: aiohttp's
async def test_access_lines_name_unrouted_paths_by_template_and_cache_hits_without_cube(client, cube, access_lines):
    secret = "glpat-secret-000000000099"
    assert (await client.get(f"/api/v4/projects/12/nope/{secret}?private_token={secret}")).status == 404
    assert (await client.get(META, headers=REPORTER)).status == 200
    assert (await client.get(META, headers=REPORTER)).status == 200  # from the meta cache
    lines = access_lines()
    unrouted = next(e for e in lines if e["route"] is None)
    assert unrouted["path"] == "/api/v4/projects/{n}/nope/{x}" and secret not in orjson.dumps(lines).decode()
    asked, hit = [e for e in lines if e["route"] and e["route"].endswith("/meta")][-2:]
    assert (asked["cache"], asked["cube_status"]) == ("miss", 200) and asked["cube"]
    assert (hit["cache"], hit["cube_status"], hit["cube_ms"], hit["cube"]) == ("hit", None, None, None)


async def test_saturation_metrics_the_loop_the_connections_and_gitlab_by_class(client, gitlab, cube, serving):
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    assert (
        await client.post(LOAD, json={"query": QUERY}, headers={"PRIVATE-TOKEN": "glpat-nobody-00000000"})
    ).status == 401

    async def sampled() -> bool:
        found = await scrape(client)
        return value(found, "pa_proxy_event_loop_lag_seconds_count") >= 1

    for _ in range(60):  # the lag is sampled every half second: wait for one sample, boundedly
        if await sampled():
            break
        await asyncio.sleep(0.05)
    found = await scrape(client)
    assert value(found, "pa_proxy_event_loop_lag_seconds_count") >= 1
    assert value(found, "pa_proxy_gitlab_answers_total", **{"class": "2xx"}) >= 4
    assert value(found, "pa_proxy_gitlab_answers_total", **{"class": "4xx"}) >= 1
    assert ("pa_proxy_cube_pool_waiting_callers", ()) in found
    if serving == "fast_lane":  # the lane knows both doors' connections: this scrape's is aiohttp's
        assert value(found, "pa_proxy_open_connections", door="aiohttp") >= 1


@pytest.mark.handed_over  # readiness and metrics are aiohttp's
async def test_cube_up_follows_the_readiness_probes(make_client, make_settings, cube):
    dead = "http://user:secret@127.0.0.1:1"
    client = await make_client(make_settings(projects={"7": {"cube_api_base_url": dead, "cube_api_key": "k" * 40}}))
    assert (await client.get("/-/readiness")).status == 200
    found = await scrape(client)
    assert value(found, "pa_proxy_cube_up", cube="http://[REDACTED]@127.0.0.1:1") == 0
    ups = {dict(labels)["cube"]: v for (name, labels), v in found.items() if name == "pa_proxy_cube_up"}
    assert sorted(ups.values()) == [0, 1] and not [u for u in ups if "secret" in u]


async def test_redis_calls_are_timed_and_counted_by_outcome(make_client, shared_settings, cube, redis_server):
    client = await make_client(replace(shared_settings, "redis", local_ttl=0.001))
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    found = await scrape(client)
    assert value(found, "pa_proxy_redis_calls_total", outcome="ok") >= 1
    assert value(found, "pa_proxy_redis_call_duration_seconds_count") >= 1
    redis_server.stop()
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    found = await scrape(client)
    failed = value(found, "pa_proxy_redis_calls_total", outcome="error")
    failed += value(found, "pa_proxy_redis_calls_total", outcome="timeout")
    assert failed >= 1


def test_every_line_on_stderr_is_json_warnings_and_uncaught_exceptions_included():
    program = """
from proxy.runtime.logs import log_uncaught, setup_logging
setup_logging("json", "INFO")
log_uncaught()
import gc, logging, threading, warnings
warnings.warn("a leaked semaphore, say", ResourceWarning)
logging.getLogger("proxy").info("and a line of ours")
class Broken:
    def __del__(self):
        raise ValueError("in a finaliser")
Broken()
gc.collect()
worker = threading.Thread(target=lambda: 1 / 0, name="helper")
worker.start()
worker.join()
raise RuntimeError("nobody caught this")
"""
    done = subprocess.run([sys.executable, "-W", "always", "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert [e["logger"] for e in lines] == [
        "py.warnings",
        "proxy",
        "proxy.uncaught",
        "proxy.uncaught",
        "proxy.uncaught",
    ]
    assert "a leaked semaphore" in lines[0]["message"] and all("pid" in e for e in lines)
    finaliser, thread, main = lines[2:]
    assert "Broken.__del__" in finaliser["message"] and "in a finaliser" in finaliser["exception"]
    assert thread["message"] == "uncaught ZeroDivisionError in thread helper" and thread["level"] == "ERROR"
    assert main["level"] == "CRITICAL" and "nobody caught this" in main["exception"]
