"""What a stranger costs a real proxy process (``python -m proxy``): memory, the event loop, bodies in flight.

A stranger is a caller with a made-up token. It is refused before its body is parsed (the
credential is checked first), its refusal is kept as data, and bodies arriving at once
are held to a budget: so its requests leave the worker's memory flat, a valid caller on
another connection keeps its latency, and a crowd of stalled bodies is refused past the
budget instead of held.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import QUERY, REPORTER
from tests.support.processes import rss_mb, serving
from tests.support.stranger_load import gzip_bomb

LOAD = "/api/v4/projects/1/product_analytics/request/load"
#: latency, CPU and memory of a real worker judged against fixed bounds: alone on the machine
pytestmark = pytest.mark.serial


async def refused_loads(port: int, n: int, size: int, concurrency: int = 8, who: str = "strangers") -> list[int]:
    """``n`` loads with ``size``-byte bodies, refused: made-up tokens (401), or a valid caller asking for projects
    that do not exist (404), each a new credential or project so that each refusal is a new cache entry."""
    body = b'{"query": {"x": "' + b"y" * (size - 20) + b'"}}'
    statuses: list[int] = []
    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with limit:
            headers = {"Content-Type": "application/json"}
            url = f"http://127.0.0.1:{port}{LOAD}"
            if who == "strangers":
                headers["PRIVATE-TOKEN"] = f"glpat-stranger-{i:012d}"
            else:
                headers |= REPORTER
                url = url.replace("/projects/1/", f"/projects/nobody%2Fnothing-{i}/")
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(n)))
    return statuses


@pytest.mark.parametrize(("who", "refusal"), [("strangers", 401), ("unknown_projects", 404)])
async def test_refused_callers_with_large_bodies_leave_memory_flat(
    tmp_path, gitlab_url, cube_url, gitlab, who, refusal
):
    unlimited = "[limits]\nrate_limit = 0.0\n"  # one valid caller asks for every unknown project
    async with serving(tmp_path, gitlab_url, cube_url, server_section=unlimited) as (port, worker, _):
        assert set(await refused_loads(port, 40, 512 * 1024, who=who)) <= {refusal, 503}  # warm: every path once
        before = rss_mb(worker)
        statuses = await refused_loads(port, 400, 512 * 1024, who=who)
        after = rss_mb(worker)
        assert set(statuses) <= {refusal, 503} and statuses.count(refusal) > 100, sorted(set(statuses))
        # 400 refusals of 512 KiB bodies (200 MiB in all) within the negative TTL: nothing of them is kept
        assert after - before < 8, (before, after)


async def test_strangers_nested_bodies_leave_a_valid_callers_latency_alone(tmp_path, gitlab_url, cube_url, cube):
    unlimited = "[limits]\nrate_limit = 0.0\n"  # the valid caller asks as fast as it is answered
    async with serving(tmp_path, gitlab_url, cube_url, server_section=unlimited) as (port, _, _):
        url = f"http://127.0.0.1:{port}{LOAD}"
        async with aiohttp.ClientSession() as session:

            async def timed() -> float:
                started = time.perf_counter()
                async with session.post(url, json={"query": QUERY}, headers=REPORTER) as resp:
                    await resp.read()
                    assert resp.status == 200
                return time.perf_counter() - started

            for _ in range(20):  # warm: the caller's answers cached, the connection open
                await timed()
            strangers = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.stranger_load",
                str(port),
                "4",
                "4",
                "nested",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip (one process, no children: killed alone; a session of its own would give it its own
            # scheduling group, and more of the CPU than the callers it stands for)
            # the test process's own garbage collection paused while it times: a full collection of pytest's heap
            # takes tens of milliseconds, which are the test's, not the proxy's
            gc.collect()
            gc.disable()
            try:
                times = []
                deadline = time.monotonic() + 3.5
                while time.monotonic() < deadline:
                    times.append(await timed())
            finally:
                gc.enable()
                try:
                    out, _ = await asyncio.wait_for(strangers.communicate(), 30)
                finally:
                    if strangers.returncode is None:
                        strangers.kill()
                        await strangers.wait()
        counts = {int(k): v for k, v in json.loads(out).items()}
        assert sum(counts.values()) >= 40 and set(counts) <= {401, 503}, counts  # they were answered, and refused
        times.sort()
        assert times[-1] < 0.05, f"worst {times[-1] * 1000:.1f} ms, p50 {times[len(times) // 2] * 1000:.1f} ms"


async def test_stalled_bodies_past_the_budget_are_refused(tmp_path, gitlab_url, cube_url, cube):
    budget = "[limits]\nbodies_in_flight_bytes = 16777216\nbodies_in_flight_per_client_bytes = 1073741824\n"
    budget += "body_timeout = 20.0\nrate_limit = 0.0\n"
    async with serving(tmp_path, gitlab_url, cube_url, server_section=budget) as (port, worker, _):
        before = rss_mb(worker)
        head = (
            f"POST {LOAD} HTTP/1.1\r\nHost: p\r\nPRIVATE-TOKEN: {REPORTER['PRIVATE-TOKEN']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {1024 * 1024 - 1}\r\n\r\n"
        ).encode()
        connections = []
        try:
            for _ in range(300):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head + b'{"query": {"x": "' + b"y" * (256 * 1024))  # and then nothing more
                connections.append((reader, writer))

            async def answer(reader: asyncio.StreamReader) -> int:
                try:
                    line = await asyncio.wait_for(reader.readline(), 3)  # a refusal comes at once
                except TimeoutError:
                    return 0  # still waiting for its body: within the budget
                return int(line.split(b" ", 2)[1]) if line else -1

            statuses = await asyncio.gather(*(answer(reader) for reader, _ in connections))
            held = rss_mb(worker) - before
        finally:
            for _, writer in connections:
                writer.close()
        # 16 MiB of budget holds 16 bodies of 1 MiB; every other one is refused at once, before it is read
        assert statuses.count(503) >= 300 - 16, sorted(set(statuses))
        assert statuses.count(0) <= 16
        assert held < 100, held


def cpu_seconds(pid: int) -> float:
    """The CPU time a process's threads have run so far, to the nanosecond (the scheduler's account)."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


async def send_bomb(port: int, bomb: bytes, token: str) -> int:
    """One load with ``bomb`` as its gzip body (with a made-up token, or none when ``token`` is empty), then a
    liveness probe on the same connection, which the worker answers only once it has read the whole bomb (what an
    attacker keeping the connection does); the load's status."""
    token = f"PRIVATE-TOKEN: {token}\r\n" if token else ""
    head = (
        f"POST {LOAD} HTTP/1.1\r\nHost: p\r\n{token}Content-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + bomb + b"GET /-/liveness HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answers = await asyncio.wait_for(reader.read(), 30)  # both answers, up to the worker's close
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert answers.count(b"HTTP/1.1 ") == 2, answers[:300]
    return int(answers.split(b" ", 2)[1])


async def test_a_strangers_gzip_bomb_costs_no_inflation_and_no_stall(tmp_path, gitlab_url, cube_url, cube):
    """1000 MiB of JSON gzipped into 1 MiB, sent with a made-up token: refused (401) before anything is inflated,
    and the rest of its body read and dropped as the compressed bytes it is (aiohttp's server inflated it all:
    0.5 s of the worker's CPU, the loop stalled as long). Its CPU is measured alone; then again with a liveness
    poller on a connection of its own, for the stall."""
    bomb = gzip_bomb(1000)
    liveness = "http://127.0.0.1:{}/-/liveness"
    async with serving(tmp_path, gitlab_url, cube_url) as (port, worker, _), aiohttp.ClientSession() as session:

        async def probe() -> float:
            started = time.perf_counter()
            async with session.get(liveness.format(port)) as resp:
                await resp.read()
            return time.perf_counter() - started

        for _ in range(20):  # warm: the poller's connection open, every path once
            await probe()
        assert await send_bomb(port, bomb, "") == 401
        before = cpu_seconds(worker)
        statuses = [await send_bomb(port, bomb, "" if n == 1 else f"glpat-stranger-{n:012d}") for n in range(1, 4)]
        await probe()  # the loop went round once more after the last body was dropped
        spent = (cpu_seconds(worker) - before) / 3
        done = asyncio.Event()
        times: list[float] = []

        async def poll() -> None:
            while not done.is_set():
                times.append(await probe())

        gc.collect()
        gc.disable()  # the test process's own collections are not the proxy's stalls
        polling = asyncio.ensure_future(poll())
        try:
            statuses += [await send_bomb(port, bomb, f"glpat-stranger-{n:012d}") for n in range(4, 7)]
        finally:
            done.set()
            await polling
            gc.enable()
    assert statuses == [401] * 6
    assert spent < 0.010, f"{spent * 1000:.1f} ms of the worker's CPU per bomb"
    assert len(times) >= 3 and max(times) < 0.020, f"a liveness probe answered {max(times) * 1000:.1f} ms late"


def test_the_stranger_load_script_builds_what_it_says():
    from tests.support.stranger_load import MIB, body, gzip_bomb

    bomb = gzip_bomb(3)
    assert len(bomb) < 10_000 and len(gzip.decompress(bomb)) == 3 * MIB + 20
    nested = body("nested")
    assert MIB - 300 < len(nested) <= MIB and orjson.loads(nested)["query"]["x"][0][0][0][0] is not None
    assert MIB - 100 < len(body("flat")) <= MIB
