"""The proxy as processes: open-files limit, workers and their parent, SIGTERM draining both doors, hang-ups."""

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.fakes.cube import chunked
from tests.support.processes import (
    ended,
    free_port,
    kill_group,
    open_files_limits,
    proxy_process,
    wait_for_line,
    worker_pids,
)
from tests.support.wire import LOAD


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_open_files_limit_is_raised_to_the_hard_limit(cube, gitlab_url, cube_url, tmp_path, workers):
    """Started with the soft limit of 1,024 that service managers often give, the proxy could hold ~1,000 callers."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.fail(f"this machine's hard limit on open files ({hard}) leaves nothing to raise")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    server = f"workers = {workers}"
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=server, preexec_fn=low_soft_limit) as (
        proc,
        port,
    ):
        wanted = str(hard) if hard != resource.RLIM_INFINITY else "1048576"
        pids = [proc.pid]
        if workers > 1:
            for _ in range(workers - 1):
                await wait_for_line(proc.stderr, "listening")  # every worker is up
            pids += worker_pids(proc.pid)
            assert len(pids) == 1 + workers
        for pid in pids:
            assert open_files_limits(pid)[0] == wanted
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}{LOAD}", json={"query": QUERY}, headers=REPORTER)
            assert resp.status == 200


async def test_workers_stop_when_their_parent_is_killed(cube, gitlab_url, cube_url, tmp_path):
    """SIGKILL to the parent (an OOM kill, a supervisor's kill -9) used to leave its workers serving on the port."""
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section="workers = 2") as (proc, port):
        await wait_for_line(proc.stderr, "listening")  # the second worker is up too
        workers = worker_pids(proc.pid)
        assert len(workers) == 2
        proc.kill()
        # each worker shuts down as on SIGTERM, and its end closes the log pipe it shares with the parent
        rest = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
        assert rest.count('"event":"shutdown"') == 2
        await asyncio.wait_for(asyncio.gather(*(ended(pid) for pid in workers)), 30)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_a_worker_that_dies_is_replaced(cube, gitlab_url, cube_url, tmp_path):
    """As nginx's master does: a crashed (or OOM-killed) worker is replaced, so the proxy keeps its capacity."""
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section="workers = 2") as (proc, port):
        await wait_for_line(proc.stderr, "listening")  # the second worker is up too
        first, second = worker_pids(proc.pid)
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(ended(first), 30)
        assert f"worker {first} ended (exit code -9): starting another" in await wait_for_line(
            proc.stderr, "starting another"
        )
        await wait_for_line(proc.stderr, "listening")
        now = worker_pids(proc.pid)
        assert len(now) == 2 and second in now and first not in now
        async with aiohttp.ClientSession() as session:
            for _ in range(4):  # whichever worker the kernel picks answers
                resp = await session.post(f"http://127.0.0.1:{port}{LOAD}", json={"query": QUERY}, headers=REPORTER)
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_taken_port_stops_the_proxy_with_status_1_and_one_line(gitlab_url, cube_url, tmp_path, workers):
    """A failure at start-up is said in one line, not a traceback; workers that fail it are not started again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.toml"
        config.write_text(
            f'[server]\nport = {port}\nworkers = {workers}\n[gitlab]\nurl = "{gitlab_url}"\n'
            f'[product_analytics]\ncube_api_base_url = "{cube_url}"\ncube_api_key = "{CUBE_KEY}"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--config", str(config), stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            kill_group(proc.pid)
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in text and "address already in use" in text.lower()
    assert "Traceback" not in text
    assert "Unclosed" not in text  # what start-up opened (the GitLab client) was closed
    # the parent binds before it forks: no worker is started onto a port it cannot have
    assert "failed before it was listening" not in text and text.count("cannot listen") == 1


@pytest.mark.parametrize("lane", ["true", "false"])
async def test_sigterm_lets_an_in_flight_stream_finish(cube, gitlab_url, cube_url, tmp_path, lane):
    """A real proxy process, with its fast lane and without: SIGTERM arrives mid-stream; the caller gets it all."""
    release = asyncio.Event()
    head = b'{"queryType":"regularQuery","results":[{"data":[' + b" " * 300
    tail = b'{"TrackedEvents.count":"9"}]}]}'
    cube.behaviour = chunked([head, tail], between=release)
    server = f"fast_lane = {lane}"
    async with proxy_process(tmp_path, gitlab_url, cube_url, "buffer_limit = 64", server) as (proc, port):
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}{LOAD}", json={"query": QUERY}, headers=REPORTER)
            assert resp.status == 200
            assert await resp.content.readexactly(len(head)) == head
            proc.send_signal(signal.SIGTERM)
            await wait_for_line(proc.stderr, "shutting down")
            release.set()
            rest = await resp.read()
            assert orjson.loads(head + rest)["results"][0]["data"] == [{"TrackedEvents.count": "9"}]
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("lane", ["true", "false"])
async def test_shutdown_drains_both_front_doors_against_one_deadline(cube, gitlab_url, cube_url, tmp_path, lane):
    """Two calls held at Cube (through the lane, one in the lane and one in aiohttp's server): SIGTERM ends
    the process within one shutdown_timeout, not one per front door, nor two for aiohttp's own shutdown."""
    grace = 3.0
    arrived, both = [], asyncio.Event()

    async def held(call, request):
        arrived.append(call)
        if len(arrived) == 2:
            both.set()
        await asyncio.Event().wait()  # Cube never answers

    cube.behaviour = held
    server = f"fast_lane = {lane}"
    async with proxy_process(tmp_path, gitlab_url, cube_url, "read_timeout = 60", server, shutdown_timeout=grace) as (
        proc,
        port,
    ):
        url = f"http://127.0.0.1:{port}{LOAD}"
        async with aiohttp.ClientSession() as session:
            calls = [
                asyncio.ensure_future(session.post(url, json={"query": QUERY}, headers=REPORTER)),  # the lane's
                asyncio.ensure_future(  # a query string: aiohttp's
                    session.post(url + "?include_token=false", json={"query": {**QUERY, "limit": 5}}, headers=REPORTER)
                ),
            ]
            await asyncio.wait_for(both.wait(), 15)
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            took = loop.time() - signalled
            await asyncio.gather(*calls, return_exceptions=True)
    assert grace <= took < grace * 1.5, took


@pytest.mark.parametrize("lane", ["true", "false"])
async def test_malformed_requests_are_one_warning_line_with_no_credential(gitlab_url, cube_url, tmp_path, lane):
    """aiohttp logged an ERROR traceback quoting the offending header, credentials and all."""
    malformed = [
        b"POST /api/v4/projects/1/product_analytics/request/load HTTP/1.1\r\nHost: x\r\n"
        b"PRIVATE-TOKEN : glpat-secret000000000001\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /-/liveness HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: secret-job-token\x01\r\n\r\n",
        b"GET /-/liveness HTTP/1.1\r\nHost: x\r\nCookie: _gitlab_session=secret-session\x01\r\n\r\n",
        b"GET /-/liveness HTTP/1.1\r\nHost: x\r\nx-csrf-token: secret-csrf\x7f\r\n\r\n",
    ]
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=f"fast_lane = {lane}") as (proc, port):
        for raw in malformed:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        log = (await proc.stderr.read()).decode()
    assert "secret" not in log and "Traceback" not in log and '"level":"ERROR"' not in log
    assert log.count("malformed request refused (400") == len(malformed)


async def test_a_caller_that_hangs_up_stops_its_call_to_cube(cube, gitlab_url, cube_url, tmp_path):
    """The production server cancels a request whose caller left: its tenant slot and Cube connection are freed."""
    arrived, dropped = asyncio.Event(), asyncio.Event()

    async def never_answers(call, request):
        arrived.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            dropped.set()  # the proxy closed its connection to Cube
            raise

    cube.behaviour = never_answers
    async with proxy_process(tmp_path, gitlab_url, cube_url, "read_timeout = 60") as (_, port):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps({"query": QUERY})
        writer.write(
            f"POST {LOAD} HTTP/1.1\r\nHost: proxy\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await arrived.wait()
        writer.close()  # the caller hangs up while Cube is still working
        await asyncio.wait_for(dropped.wait(), 15)


async def test_a_caller_that_never_finishes_its_request_head_is_closed(gitlab_url, cube_url, tmp_path):
    """A slowloris: the production server closes a connection whose request head never ends."""
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section="keepalive_timeout = 0.5") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {LOAD} HTTP/1.1\r\nHost: proxy\r\n".encode())  # and then nothing more
        await writer.drain()
        # aiohttp's own default would hold this connection for an hour; read() returns at the server's close
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(gitlab_url, cube_url, tmp_path):
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section="keepalive_timeout = 0.5") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /-/liveness HTTP/1.1\r\nHost: proxy\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 15)  # the answer, then the close once idle
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" not in answer  # it was kept alive, then closed for idling
        writer.close()


async def test_installed_command_runs_workers_sharing_the_port(cube, gitlab_url, cube_url, tmp_path):
    """`product-analytics-proxy` with workers = 2: both serve one port; SIGTERM stops them all."""
    from pathlib import Path

    import aiohttp

    command = Path(sys.executable).parent / "product-analytics-proxy"
    assert command.exists(), "the package installs the product-analytics-proxy command"
    port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[server]\nport = {port}\nworkers = 2\ndrain_delay = 0\n[gitlab]\nurl = "{gitlab_url}"\n'
        f'[product_analytics]\ncube_api_base_url = "{cube_url}"\ncube_api_key = "{CUBE_KEY}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        str(command), "--config", str(config), stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        await wait_for_line(proc.stderr, "listening")
        await wait_for_line(proc.stderr, "listening")  # one line per worker
        async with aiohttp.ClientSession() as session:
            for _ in range(10):
                resp = await session.post(f"http://127.0.0.1:{port}{LOAD}", json={"query": QUERY}, headers=REPORTER)
                assert resp.status == 200
                await resp.read()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        kill_group(proc.pid)
        await proc.wait()


def test_the_server_process_tunes_the_garbage_collector() -> None:
    code = (
        "import gc; from proxy.runtime.serve import tune_gc, GC_GEN0_THRESHOLD as T; tune_gc(); "
        "print(gc.get_threshold()[0] == T, gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_a_worker_stopped_before_it_listens_just_ends(tmp_path):
    """Workers used to inherit the parent's SIGTERM handler: one stopped during start-up printed a traceback.

    Each worker here stops the parent before listening and waits for the SIGTERM the parent
    then forwards, so the signal always arrives while the worker is starting up.
    """
    script = tmp_path / "supervised.py"
    script.write_text(
        "import os, signal, sys\n"
        "from proxy.runtime.workers import Supervisor\n"
        "def worker_main(parent, on_listening):\n"
        "    os.kill(parent, signal.SIGTERM)\n"
        "    signal.pause()\n"
        "sys.exit(Supervisor(lambda generation, slot: worker_main, 'first', lambda generation: 2).run())\n"
    )
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0
