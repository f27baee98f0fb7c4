"""Operations basics: health routes, the access log, the command line, graceful shutdown."""

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.runtime.logs import JsonFormatter, TextFormatter, redact, setup_logging
from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.fakes.cube import chunked

LOAD = "/api/v4/projects/1/product_analytics/request/load"


@pytest.mark.handed_over
async def test_liveness(client):
    resp = await client.get("/-/liveness")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_the_runtime_view_is_for_loopback_callers_only(client, cube, monkeypatch):
    await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    resp = await client.get("/-/runtime")
    assert resp.status == 200
    view = await resp.json()
    assert view["pid"] == os.getpid() and view["tasks"] >= 1
    assert view["cube_connections"] == {"open": 1, "idle": 1}
    full = []
    gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
    try:
        collected = [await (await client.get("/-/runtime?collect=1")).json() for _ in range(3)]
    finally:
        gc.callbacks.pop()
    assert collected[0]["python_blocks"] > 0 and collected[0]["collected"] is True
    # one full collection, however often it is asked for: the others get the blocks it left
    assert [c["collected"] for c in collected] == [True, False, False] and len(full) == 1
    assert {c["python_blocks"] for c in collected} == {collected[0]["python_blocks"]}
    from aiohttp import web

    monkeypatch.setattr(web.BaseRequest, "remote", property(lambda self: "203.0.113.9"))  # a caller from afar
    assert (await client.get("/-/runtime")).status == 404


@pytest.mark.handed_over
async def test_readiness_follows_cube(client, cube):
    resp = await client.get("/-/readiness")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
    cube.ready = False
    resp = await client.get("/-/readiness")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"


@pytest.mark.handed_over
async def test_readiness_probes_cube_once_per_ttl_however_many_ask(make_settings, make_client, cube):
    """Unauthenticated readiness calls used to reach Cube one for one, over the analytics pool."""
    client = await make_client(make_settings(cube={"readiness_ttl": 60.0}))
    answers = await asyncio.gather(*(client.get("/-/readiness") for _ in range(12)))
    assert [resp.status for resp in answers] == [200] * 12
    assert cube.readyz_calls == 1


async def test_readiness_does_not_wait_for_a_busy_analytics_pool(make_settings, make_client, cube):
    """With every analytics connection to Cube busy, readiness still asks Cube (over its own connections)."""
    from tests.fakes.cube import held_until

    release = asyncio.Event()
    cube.behaviour = held_until(release)
    client = await make_client(make_settings(cube={"pool_size": 1, "queue_timeout": 30.0}))
    load = asyncio.ensure_future(client.post(LOAD, json={"query": QUERY}, headers=REPORTER))
    while not cube.calls:
        await asyncio.sleep(0)
    resp = await client.get("/-/readiness")
    assert resp.status == 200 and cube.readyz_calls == 1
    release.set()
    assert (await load).status == 200


@pytest.mark.handed_over
async def test_not_ready_when_cube_is_unreachable_or_unset(make_settings, make_client, unused_tcp_port):
    client = await make_client(
        make_settings(product_analytics={"cube_api_base_url": f"http://127.0.0.1:{unused_tcp_port}"})
    )
    assert (await client.get("/-/readiness")).status == 503
    from proxy.settings import settings_from_mapping

    client = await make_client(settings_from_mapping({}, {}))
    assert (await client.get("/-/readiness")).status == 503


@pytest.mark.handed_over
async def test_one_access_log_line_per_request_without_tokens(client, cube, access_lines, capsys):
    await client.post(
        LOAD + "?private_token=glpat-reporter-0000000001", json={"query": QUERY}, headers={"X-Request-Id": "trace-1"}
    )
    await client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER)
    await client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER)
    lines = access_lines()
    assert len(lines) == 3
    first = lines[0]
    assert first["level"] == "INFO"
    assert first["message"] == "POST /api/v4/projects/{project}/product_analytics/request/load 200"
    assert first["event"] == "request"
    assert first["request_id"] == "trace-1-span-1"
    assert first["method"] == "POST"
    assert first["project"] == 1
    assert first["route"] == "/api/v4/projects/{project}/product_analytics/request/load"
    assert first["status"] == 200
    assert first["duration_ms"] >= 0
    assert first["aborted"] is False
    assert [line["cache"] for line in lines] == ["miss", "miss", "hit"]
    assert "glpat" not in orjson.dumps(lines).decode()


@pytest.mark.parametrize("prefix", ["/api/v4", ""])
async def test_the_access_line_of_a_plain_load_and_of_a_refused_one(client, cube, access_lines, serving, prefix):
    """The fields of the line each front door writes for the calls the lane serves (a plain load, a 401)."""
    path = f"{prefix}/projects/1/product_analytics/request/load"
    served = await client.post(path, json={"query": QUERY}, headers={**REPORTER, "X-Request-Id": "abc"})
    refused = await client.post(path, json={"query": QUERY})
    assert (served.status, refused.status) == (200, 401)
    ok, no = access_lines()
    route = f"{prefix}/projects/{{project}}/product_analytics/request/load"
    assert ok["message"] == f"POST {route} 200"
    assert (ok["route"], ok["method"], ok["status"], ok["project"], ok["cache"]) == (route, "POST", 200, 1, "miss")
    assert ok["request_id"] == served.headers["X-Request-Id"] == "abc-span-1"
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] >= 0 and ok["aborted"] is False
    assert (no["route"], no["status"], no["project"], no["cache"]) == (route, 401, None, None)
    assert no["request_id"] == refused.headers["X-Request-Id"]


@pytest.mark.handed_over
async def test_no_access_lines_above_info(client, cube, capsys, caplog):
    caplog.set_level(logging.WARNING, logger="proxy.access")
    await client.get("/api/v4/projects/1/product_analytics/request/meta", headers=REPORTER)
    assert "proxy.access" not in capsys.readouterr().err


def test_access_lines_in_text_form_and_through_the_redaction_guard():
    import io

    from proxy.pipeline.access_log import AccessLog

    stream = io.StringIO()
    AccessLog("text", lambda: stream).write("GET /x?private_token=secret 200", {"status": 200})
    AccessLog("json", lambda: stream).write("GET /y 200", {"note": "Authorization: Bearer secret"})
    text, json_line = stream.getvalue().splitlines()
    assert text.endswith(" INFO proxy.access GET /x?private_token=[REDACTED] 200")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text.split(" ")[0])  # UTC, ms, zone
    entry = json.loads(json_line)
    assert entry["note"] == "Authorization: [REDACTED]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_redaction_guard():
    assert "secret" not in redact("GET /x?private_token=secret&a=1")
    assert "secret" not in redact("PRIVATE-TOKEN: secret")
    assert "secret" not in redact("Authorization: Bearer secret")
    assert "secret" not in redact('{"q":"a","h":"authoRIZATION=secret"}')
    assert "secret" not in redact("Author\u0131zation: secret")  # the dotless i, which re folds to i
    assert "secret" not in redact("job_to\u212aen=secret")  # the Kelvin sign, which re folds to k
    assert redact('{"route":"/x","status":200}') == '{"route":"/x","status":200}'
    # every credential form, any case and spacing: headers, query strings, cookies, CSRF tokens, bare tokens
    for line in [
        "PRIVATE-TOKEN : secret",
        "private-token:secret",
        "JOB-TOKEN: secret",
        "b'job-token :\\tsecret\\x01'",
        "Cookie: theme=dark; _gitlab_session=secret; other=secret",
        "b'Cookie: _gitlab_session=secret\\x01'",
        "X-CSRF-Token: secret",
        "csrf_token=secret",
        "_gitlab_session=secret",
        "Authorization: Basic secret",
        "the caller sent glpat-secretsecret1234 somewhere",
        "gloas-secretsecret1234",
    ]:
        assert "secret" not in redact(line), line
    record = logging.makeLogRecord({"msg": "token access_token=secret", "levelname": "INFO", "name": "x"})
    assert "secret" not in TextFormatter("%(message)s").format(record)
    try:
        raise ValueError("private_token=secret")
    except ValueError:
        import sys as _sys

        record = logging.makeLogRecord({"msg": "boom", "exc_info": _sys.exc_info(), "levelname": "ERROR"})
    assert "secret" not in JsonFormatter().format(record)


def test_log_lines_carry_each_record_s_own_time_in_utc_to_the_millisecond():
    formatter, text = JsonFormatter(), TextFormatter("%(asctime)s %(message)s")
    times, texts = [], []
    for created in (1000.2, 1000.9, 1001.0, 1764619801.5):
        record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "x", "created": created})
        times.append(orjson.loads(formatter.format(record))["time"])
        texts.append(text.format(record).split(" ")[0])
    expected = [
        "1970-01-01T00:16:40.200Z",
        "1970-01-01T00:16:40.900Z",
        "1970-01-01T00:16:41.000Z",
        "2025-12-01T20:10:01.500Z",
    ]
    assert times == texts == expected


def test_setup_logging_installs_one_handler():
    setup_logging("json", "debug")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("aiohttp.access").disabled
    setup_logging("text", "INFO")
    assert isinstance(root.handlers[0].formatter, TextFormatter)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_reports_every_settings_problem(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nport = "x"\nworkers = -1\n[gitlab]\nurl = "nope"\n')
    result = run_cli("--config", str(config))
    assert result.returncode == 2
    assert "[server] port" in result.stderr and "[server] workers" in result.stderr and "[gitlab] url" in result.stderr


def test_cli_check_and_proxy_config_env(tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[product_analytics]\ncube_api_base_url = "http://127.0.0.1:4000"\ncube_api_key = "{CUBE_KEY}"\n'
    )
    result = run_cli("--check", env={"PROXY_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "settings are valid (1 worker(s) on 127.0.0.1:8080)" in result.stdout
    result = run_cli("--check", "--workers", "3", env={"PROXY_CONFIG": str(config)})
    assert "(3 worker(s)" in result.stdout
    result = run_cli("--check", "--workers", "0", env={"PROXY_CONFIG": str(config)})
    assert result.returncode == 2 and "[server] workers: must be greater than 0" in result.stderr


def test_cli_checks_the_dev_tokens_file(tmp_path):
    config = tmp_path / "dev.toml"
    config.write_text(f'[auth]\nbackend = "dev_tokens"\ndev_tokens_file = "{tmp_path / "missing.toml"}"\n')
    result = run_cli("--check", "--config", str(config))
    assert result.returncode == 2
    assert "cannot be read" in result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_line(stream, needle, limit=200):
    for _ in range(limit):
        line = await asyncio.wait_for(stream.readline(), 30)
        if not line:
            raise AssertionError(f"process ended before printing {needle!r}")
        if needle in line.decode():
            return line.decode()
    raise AssertionError(f"{needle!r} not printed")


@contextlib.asynccontextmanager
async def proxy_process(
    tmp_path,
    gitlab_url,
    cube_url,
    cube_section="",
    server_section="",
    preexec_fn=None,
    shutdown_timeout=20,
    drain_delay=0.0,
):
    """The proxy as production runs it (``python -m proxy``), listening; killed if a test leaves it running."""
    port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"[server]\nport = {port}\nshutdown_timeout = {shutdown_timeout}\n"
        f"drain_delay = {drain_delay}\n{server_section}\n"
        f'[gitlab]\nurl = "{gitlab_url}"\n'
        f'[product_analytics]\ncube_api_base_url = "{cube_url}"\ncube_api_key = "{CUBE_KEY}"\n[cube]\n{cube_section}\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--config", str(config), stderr=asyncio.subprocess.PIPE, preexec_fn=preexec_fn
    )
    try:
        await wait_for_line(proc.stderr, "listening")
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def open_files_limits(pid: int) -> tuple[str, str]:
    """The soft and hard limits on open files of a running process, as the kernel reports them."""
    line = next(
        line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max open files")
    )
    soft, hard = line.split()[3:5]
    return soft, hard


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


async def ended(pid: int) -> None:
    """Wait until a process (not necessarily our child) has ended: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def worker_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


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
            sys.executable, "-m", "proxy", "--config", str(config), stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
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
    proc = await asyncio.create_subprocess_exec(str(command), "--config", str(config), stderr=asyncio.subprocess.PIPE)
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
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_server_process_tunes_the_garbage_collector() -> None:
    code = (
        "import gc; from proxy.runtime.server import tune_gc, GC_GEN0_THRESHOLD as T; tune_gc(); "
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
