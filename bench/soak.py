"""``make soak``: mixed traffic against the real stack with two workers, for ten minutes; nothing may grow.

``python -m bench.soak [--minutes 10] [--every 30]`` starts PostgreSQL with the demo data,
a real Cube, the fake GitLab and the proxy (``--workers 2``), then runs, all at once and
for the whole time: loads of varied queries, meta, slow queries (real Continue wait),
hostile requests (bad JSON, over-limit queries, unknown tokens, malformed bytes), and slow
readers (a large answer read a little at a time, or not at all). Every ``--every`` seconds
it samples each worker: RSS and open files from /proc, and asyncio tasks, Cube connections
and live Python objects from the loopback-only ``/-/runtime?collect=1``, which runs a full
garbage collection first (a leak is what is still held after one; without it, RSS also
carries cyclic garbage waiting for the next full collection, which the server's tuned
collector runs rarely: ``bench/NOTES.md``). It prints a row per sample. It passes when,
from the first sample after warm-up to the last, no worker's RSS grew by more than
``RSS_SLACK_MB``, the floor of its live objects (from the first half's samples to the
second's) by more than ``BLOCKS_SLACK``, and its open files,
tasks and Cube connections by more than ``COUNT_SLACK``; it prints one line saying so,
and exits 1 otherwise. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.procs import fake_gitlab, proxy_process
from stack.localstack import running_stack

KEY = "soak-cube-api-key-0123456789abcdef-0123"
TOKEN = "glpat-reporter-0000000001"
BASE = "/api/v4/projects/{}/product_analytics/request/{}"
#: RSS a worker may gain after warm-up (allocator noise, caches filling) before it counts as a leak
RSS_SLACK_MB = 24.0
#: open files, tasks and Cube connections a worker may hold above its warm level (work in flight)
COUNT_SLACK = 40
#: the floor of live Python objects (the least of a half's samples: requests in flight come and go
#: between samples, by about a tenth) may rise by this share from the first half to the second
BLOCKS_SLACK = 0.10
QUERIES = [
    {"measures": ["TrackedEvents.count"]},
    {"measures": ["TrackedEvents.count"], "dimensions": ["TrackedEvents.eventName"]},
    {"measures": ["Sessions.count"]},
    {
        "measures": ["TrackedEvents.count"],
        "timeDimensions": [
            {"dimension": "TrackedEvents.derivedTstamp", "granularity": "day", "dateRange": "last 30 days"}
        ],
    },
]


@dataclass
class Sample:
    at: float
    pid: int
    rss_mb: float
    files: int
    tasks: int
    cube_open: int
    #: live Python objects after a full collection: what a leak would grow
    blocks: int


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, port: int, deadline: float) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.deadline = deadline
        self.outcomes: Counter[str] = Counter()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def loads(self, session: aiohttp.ClientSession) -> None:
        while self.running():
            project = random.choice([1, 2])
            endpoint = random.choice(["load", "load", "dry-run"])
            query = {**random.choice(QUERIES), "limit": random.randint(1, 500)}
            async with session.post(
                self.url + BASE.format(project, endpoint), json={"query": query}, headers={"PRIVATE-TOKEN": TOKEN}
            ) as resp:
                await resp.read()
                self.outcomes[f"{endpoint} {resp.status}"] += 1

    async def meta(self, session: aiohttp.ClientSession) -> None:
        while self.running():
            async with session.get(self.url + BASE.format(1, "meta"), headers={"PRIVATE-TOKEN": TOKEN}) as resp:
                await resp.read()
                self.outcomes[f"meta {resp.status}"] += 1

    async def slow_queries(self, session: aiohttp.ClientSession) -> None:
        while self.running():
            query = {"measures": ["SlowQueries.count"], "limit": random.randint(1, 10**6) % 50_000}
            async with session.post(
                self.url + BASE.format(1, "load"), json={"query": query}, headers={"PRIVATE-TOKEN": TOKEN}
            ) as resp:
                await resp.read()
                self.outcomes[f"slow {resp.status}"] += 1

    async def hostile(self, session: aiohttp.ClientSession) -> None:
        bodies = [b"{", b'{"query": 1}', orjson.dumps({"query": {"measures": ["x"], "limit": 10**9}})]
        while self.running():
            kind = random.randrange(4)
            if kind == 3:  # bytes no HTTP parser takes
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"POST /x HTTP/1.1\r\nPRIVATE-TOKEN : glpat-x\r\n\r\n")
                    await asyncio.wait_for(reader.read(), 10)
                    writer.close()
                self.outcomes["malformed"] += 1
                continue
            if kind < 2:  # a bad body from a known caller
                token, data = TOKEN, random.choice(bodies)
            else:  # a good body with a token nobody issued
                token, data = f"glpat-unknown-{random.randrange(10**9):09d}", orjson.dumps({"query": QUERIES[0]})
            async with session.post(
                self.url + BASE.format(1, "load"), data=data, headers={"PRIVATE-TOKEN": token}
            ) as resp:
                await resp.read()
                self.outcomes[f"hostile {resp.status}"] += 1

    async def slow_reader(self) -> None:
        """A large answer (20,000 generated rows, about 6 MB) read a little at a time, or left unread."""
        query = {"dimensions": [f"BenchRows.{c}" for c in "nabcde"], "limit": 20_000, "order": {"BenchRows.n": "asc"}}
        body = orjson.dumps({"query": query})
        request = (
            f"POST {BASE.format(1, 'load')} HTTP/1.1\r\nHost: soak\r\nPRIVATE-TOKEN: {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        while self.running():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=4096)
                writer.write(request)
                if random.random() < 0.5:
                    for _ in range(50):  # a trickle, then gone
                        if not await asyncio.wait_for(reader.read(1024), 10):
                            break
                        await asyncio.sleep(0.05)  # this caller's pace, not a synchronisation
                else:
                    await asyncio.sleep(7)  # reads nothing: the proxy's write_timeout cuts it off
                writer.close()
                self.outcomes["slow reader"] += 1
            except (TimeoutError, OSError):
                self.outcomes["slow reader cut off"] += 1

    async def sample(self, session: aiohttp.ClientSession, pids: list[int]) -> list[Sample]:
        """One sample per worker: /-/runtime until each worker has answered (bounded tries)."""
        views: dict[int, dict[str, object]] = {}
        for _ in range(200):
            connector_session = aiohttp.ClientSession()  # a new connection each time, so either worker answers
            async with connector_session, connector_session.get(self.url + "/-/runtime?collect=1") as resp:
                view = await resp.json()
            views[int(view["pid"])] = view
            if set(pids) <= set(views):
                break
        now = time.monotonic()
        samples = []
        for pid in pids:
            view = views.get(pid, {"tasks": -1, "cube_connections": {"open": -1}, "python_blocks": -1})
            connections = view["cube_connections"]
            assert isinstance(connections, dict)
            samples.append(
                Sample(
                    now,
                    pid,
                    proc_rss_mb(pid),
                    proc_files(pid),
                    int(str(view["tasks"])),
                    int(connections["open"]),
                    int(str(view["python_blocks"])),
                )
            )
        return samples


def workers_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
    return sorted(found)


async def run(port: int, parent: int, minutes: float, every: float) -> bool:
    started = time.monotonic()
    soak = Soak(port, started + minutes * 60)
    for _ in range(600):  # both workers up (bounded)
        pids = workers_of(parent)
        if len(pids) >= 2:
            break
        await asyncio.sleep(0.05)
    rows: list[list[Sample]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        workers = [
            *(soak.loads(session) for _ in range(8)),
            *(soak.meta(session) for _ in range(2)),
            *(soak.slow_queries(session) for _ in range(2)),
            *(soak.hostile(session) for _ in range(2)),
            *(soak.slow_reader() for _ in range(2)),
        ]
        traffic = asyncio.gather(*workers)
        head = f"{'pid':>7} {'rss MB':>7} {'blocks':>8} {'files':>5} {'tasks':>5} {'cube':>4}"
        print(f"{'s':>5} " + " ".join(head for _ in pids))
        try:
            while soak.running():
                await asyncio.sleep(min(every, max(0.0, soak.deadline - time.monotonic())))  # the sampling period
                row = await soak.sample(session, pids)
                rows.append(row)
                cells = " ".join(
                    f"{s.pid:>7} {s.rss_mb:>7.1f} {s.blocks:>8} {s.files:>5} {s.tasks:>5} {s.cube_open:>4}" for s in row
                )
                print(f"{row[0].at - started:>5.0f} {cells}", flush=True)
        finally:
            await traffic
    print("requests:", ", ".join(f"{k}: {v}" for k, v in sorted(soak.outcomes.items())))
    warm, last = rows[min(1, len(rows) - 1)], rows[-1]
    problems = []
    for before, after in zip(warm, last, strict=True):
        if after.rss_mb - before.rss_mb > RSS_SLACK_MB:
            problems.append(f"worker {after.pid}: RSS grew {after.rss_mb - before.rss_mb:.1f} MB")
        for what in ("files", "tasks", "cube_open"):
            if getattr(after, what) - getattr(before, what) > COUNT_SLACK or getattr(after, what) < 0:
                problems.append(f"worker {after.pid}: {what} {getattr(before, what)} -> {getattr(after, what)}")
    steady = rows[1:] or rows  # after the first sample: warm-up
    first, second = steady[: max(1, len(steady) // 2)], steady[max(1, len(steady) // 2) :] or steady[-1:]
    for n, pid in enumerate(pids):
        floor_before = min(row[n].blocks for row in first)
        floor_after = min(row[n].blocks for row in second)
        if floor_after > floor_before * (1 + BLOCKS_SLACK):
            problems.append(f"worker {pid}: the floor of live Python objects rose {floor_before} -> {floor_after}")
    served = sum(v for k, v in soak.outcomes.items() if k.endswith(" 200"))
    if served == 0:
        problems.append("no request was answered 200")
    if problems:
        print("soak: FAIL -", "; ".join(problems))
        return False
    print(f"soak: PASS - {len(pids)} workers flat over {minutes:g} min (RSS within {RSS_SLACK_MB:g} MB of warm-up)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pa-proxy-soak-") as tmp, running_stack(KEY) as stack:
        workdir = Path(tmp)
        gitlab, gitlab_url = fake_gitlab(workdir)
        gitlab.start()
        proxy, port = proxy_process(
            workdir,
            "soak",
            gitlab_url,
            stack.cube.url,
            KEY,
            server={"workers": 2, "write_timeout": 5.0, "keepalive_timeout": 15.0},
            gitlab={"cache_ttl": 30.0},
        )
        proxy.start()
        try:
            assert proxy.proc is not None
            ok = asyncio.run(run(port, proxy.proc.pid, args.minutes, args.every))
        finally:
            proxy.stop()
            gitlab.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
