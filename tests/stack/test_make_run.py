"""`make run`'s launcher (python -m stack.run): the stack comes up, answers with real numbers, Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from stack.localstack import STORES, free_port
from tests.support.processes import kill_group

ROOT = Path(__file__).resolve().parents[2]


def fetch_json(request: urllib.request.Request) -> dict:
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def local_config(tmp_path: Path, proxy_port: int, cube_port: int) -> Path:
    config = tmp_path / "local.toml"
    config.write_text(
        (ROOT / "config" / "local.toml")
        .read_text()
        .replace("port = 8080", f"port = {proxy_port}")
        .replace("127.0.0.1:4000", f"127.0.0.1:{cube_port}")
    )
    return config


@contextlib.asynccontextmanager
async def another_cube(port: int):
    """What a Cube user likely has running already: a Cube on the configured port, ready, refusing our tokens."""

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"health": "HEALTH"})

    async def anything(_: web.Request) -> web.Response:
        return web.json_response({"error": "Invalid token"}, status=403)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("store", STORES)
async def test_launcher_prints_a_working_curl_and_ctrl_c_stops_everything(tmp_path, store):
    """On either store; on ClickHouse with another Cube already on the configured Cube port, which the stack
    must neither take for its own nor die of: it runs its Cube on a free port and says so."""
    # PostgreSQL runs as the postgres user, who cannot enter pytest's tmp_path: a folder of /tmp instead
    workdir = Path(tempfile.mkdtemp(prefix="pa-proxy-make-run-"))
    proxy_port, cube_port, pg_port = free_port(), free_port(), free_port()
    config = local_config(tmp_path, proxy_port, cube_port)
    async with contextlib.AsyncExitStack() as squatters:
        if store == "clickhouse":
            await squatters.enter_async_context(another_cube(cube_port))
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "stack.run", "--config", str(config), "--store", store),
            *(f"--{'clickhouse' if store == 'clickhouse' else 'pg'}-port", str(pg_port), "--workdir", str(workdir)),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        await _launched(proc, workdir, store, proxy_port, cube_port, pg_port)


async def _launched(proc, workdir: Path, store: str, proxy_port: int, cube_port: int, pg_port: int) -> None:
    printed: list[str] = []
    try:
        while not any("Ctrl-C stops everything" in line for line in printed):
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, "the launcher ended early:\n" + "".join(printed)
            printed.append(line.decode())
        text = "".join(printed)
        assert f"The proxy is ready at http://127.0.0.1:{proxy_port}" in text
        assert ("ClickHouse on" if store == "clickhouse" else "PostgreSQL on") in text
        if store == "clickhouse":
            assert f"port {cube_port} (Cube's (another Cube, perhaps)) is in use by another process: using" in text
            cube_port = int(re.search(r"Cube on http://127\.0\.0\.1:(\d+)", text).group(1))
        assert "curl -s -H 'PRIVATE-TOKEN: dev-maintainer-token-0001'" in text
        assert re.search(r"It answers now: \d{4}-\d\d-\d\d: \d+", text)  # real numbers
        explorer = f"http://127.0.0.1:{proxy_port}/-/explorer"
        assert f"The query explorer: {explorer}" in text and "dev token dev-maintainer-token-0001" in text
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(explorer, timeout=10).read())
        assert b"Product analytics explorer" in page
        # the printed curl's request, made here: the numbers are real and per project
        body = re.search(r"-d '(\{.*\})'", text).group(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{proxy_port}/api/v4/projects/1/product_analytics/request/load",
            data=body.encode(),
            headers={"PRIVATE-TOKEN": "dev-maintainer-token-0001", "Content-Type": "application/json"},
        )
        answer = await asyncio.to_thread(fetch_json, request)
        assert sum(int(r["TrackedEvents.count"]) for r in answer["results"][0]["data"]) > 0
        assert port_open(cube_port) and port_open(pg_port)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = await asyncio.wait_for(proc.communicate(), 90)
        assert "stopped." in rest.decode()
        assert proc.returncode == 0
        assert not port_open(proxy_port) and not port_open(cube_port) and not port_open(pg_port)
    finally:
        kill_group(proc.pid)  # the launcher's own group; PostgreSQL and Cube it ends itself (their own sessions)
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_taken_proxy_port_is_one_line_saying_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = local_config(tmp_path, port, free_port())
        done = subprocess.run(
            [sys.executable, "-m", "stack.run", "--config", str(config), "--workdir", str(tmp_path / "stack")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines() == [
        f"make run: port {port} (the proxy's, [server] port in {config}) is in use by another process: stop it,"
        " or run the proxy on another port: PROXY_SERVER__PORT=8081 make run"
    ]
