"""Traces of the proxy as production runs it (``python -m proxy``): every worker's queued spans reach the collector
when the proxy stops (SIGTERM) or replaces its workers (SIGHUP), and with tracing off the SDK is never loaded."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import pytest

from tests.conftest import QUERY, REPORTER
from tests.support.processes import proxy_process, worker_pids
from tests.support.waiting import Lines, eventually
from tests.support.wire import LOAD

SERVER_SPAN = "POST /api/v4/projects/{project}/product_analytics/request/load"
#: a minute between exports: whatever the collector gets before the signal, the signal's flush did not send
TRACING = '[tracing]\nenabled = true\nendpoint = "{url}"\nexport_delay = 60.0\n'
#: what ``proxy.observe.tracing.Tracing`` imports, and nothing else does
LOADED_ONLY_WITH_TRACING = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter",
    "opentelemetry.trace.propagation.tracecontext",
    "google.protobuf",
    "proxy.observe.span_export",
)
TWO_WORKERS = "workers = 2\n[limits]\nrate_limit = 0.0"


async def loads(port: int, count: int) -> None:
    """``count`` plain loads, each on a fresh connection (so both workers' listeners take some)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(count):
            async with session.post(f"http://127.0.0.1:{port}{LOAD}", json={"query": QUERY}, headers=REPORTER) as resp:
                assert resp.status == 200
                await resp.read()


def servers(collector) -> list:
    return [span for span in collector.spans if span.name == SERVER_SPAN]


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_sends_every_workers_queued_spans_before_the_proxy_exits(
    cube, gitlab_url, cube_url, tmp_path, collector, workers
):
    tracing = TRACING.format(url=collector.url)
    server = f"workers = {workers}\n[limits]\nrate_limit = 0.0"
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=server, sections=tracing) as (
        proc,
        port,
    ):
        lines = Lines(proc.stderr)
        workers = set(worker_pids(proc.pid))
        await loads(port, 8)
        assert collector.spans == []  # queued in the workers: the export period is a minute
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await lines.close()
    served = servers(collector)
    assert len(served) == 8 and len(cube.calls) == 8
    assert {span.resource["process.pid"] for span in served} <= workers
    assert {span.trace_id for span in served} == {call.headers["traceparent"].split("-")[1] for call in cube.calls}


async def test_a_reload_sends_the_old_workers_spans_as_they_retire(cube, gitlab_url, cube_url, tmp_path, collector):
    tracing = TRACING.format(url=collector.url)
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=TWO_WORKERS, sections=tracing) as (
        proc,
        port,
    ):
        lines = Lines(proc.stderr)
        old = set(worker_pids(proc.pid))
        await loads(port, 6)
        assert collector.spans == []
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: lines.having("reloaded:"), "the reload's line")
        await collector.until(lambda spans: len(servers(collector)) == 6)
        assert proc.returncode is None  # the proxy goes on: the spans came from the retiring workers
        assert {span.resource["process.pid"] for span in servers(collector)} <= old
        await loads(port, 2)  # the new workers trace too, and send theirs on SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await lines.close()
    assert len(servers(collector)) == 8
    assert {span.resource["process.pid"] for span in servers(collector)[6:]}.isdisjoint(old)


def test_with_tracing_off_the_sdk_is_never_loaded():
    """The default path pays one branch: neither the SDK's tracing, its exporter nor the span export is loaded.

    (redis-py 8 imports OpenTelemetry's API and metrics SDK on its own when they are installed; that is
    its start-up cost, not a request's.)"""
    program = (
        "import sys\n"
        f"LOADED_ONLY_WITH_TRACING = {LOADED_ONLY_WITH_TRACING!r}\n"
        "from proxy.settings import settings_from_mapping\n"
        "from proxy.web.app import create_app\n"
        "settings = settings_from_mapping({'gitlab': {'url': 'http://127.0.0.1:9'}, 'product_analytics': "
        "{'cube_api_base_url': 'http://127.0.0.1:9/cubejs-api/v1', 'cube_api_key': 'k' * 32}}, {})\n"
        "create_app(settings)\n"
        "print(sorted(name for name in sys.modules if name.startswith(LOADED_ONLY_WITH_TRACING)))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
