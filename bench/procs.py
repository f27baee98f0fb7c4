"""Processes the benchmarks start (nginx, the proxy, the fake GitLab) and what they are measured by."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from stack.localstack import free_port, stop_process, wait_until
from stack.nginx import start_nginx

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

#: a 2 KB Cube-like load answer served by the fast upstream
FAST_BODY = json.dumps(
    {
        "queryType": "regularQuery",
        "results": [
            {
                "query": {"measures": ["TrackedEvents.count"], "limit": 10000, "timezone": "UTC", "order": []},
                "lastRefreshTime": "2026-11-26T10:00:00.000Z",
                "annotation": {
                    "measures": {"TrackedEvents.count": {"title": "Tracked Events Count", "type": "number"}}
                },
                "dataSource": "default",
                "dbType": "postgres",
                "slowQuery": False,
                "data": [
                    {
                        "TrackedEvents.derivedTstamp.day": f"2026-11-{d:02d}T00:00:00.000",
                        "TrackedEvents.count": str(d * 37),
                    }
                    for d in range(1, 23)
                ],
            }
        ],
        "pivotQuery": {"measures": ["TrackedEvents.count"]},
        "slowQuery": False,
    },
    separators=(",", ":"),
)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Managed:
    """A started server process and its children (whose CPU and memory are measured)."""

    proc: subprocess.Popen[bytes] | None

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        stop_process(self.proc, 30)


@dataclass
class Nginx(Managed):
    """One nginx instance (one worker unless told) from a config body."""

    workdir: Path
    name: str
    server_block: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    workers: int = 1

    def start(self) -> None:
        self.proc = start_nginx(self.workdir / self.name, self.server_block, self.port, self.workers)


def fast_upstream(workdir: Path) -> Nginx:
    body = FAST_BODY.replace("'", "\\'")
    return Nginx(
        workdir,
        "upstream",
        f"""
        server {{
            listen 127.0.0.1:PORT reuseport backlog=8192;
            location / {{ default_type application/json; return 200 '{body}'; }}
        }}
        """,
    )


def reference_proxy(workdir: Path, upstream_port: int, workers: int = 1) -> Nginx:
    return Nginx(
        workdir,
        "reference" if workers == 1 else f"reference-{workers}-workers",
        f"""
        upstream cube {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
        server {{
            listen 127.0.0.1:PORT backlog=8192{" reuseport" if workers > 1 else ""};
            location / {{
                proxy_pass http://cube;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }}
        }}
        """,
        workers=workers,
    )


@dataclass
class Process(Managed):
    """A Python process of ours (the proxy, the fake GitLab)."""

    args: list[str]
    ready_url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], cwd=ROOT, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        wait_until(lambda: http_ok(self.ready_url), " ".join(self.args), 30, self.proc)


def fake_gitlab(workdir: Path) -> tuple[Process, str]:
    """The fake GitLab the benchmarks authenticate against (not started), and its URL."""
    port = free_port()
    process = Process(
        ["-m", "bench.fake_gitlab", str(port)], f"http://127.0.0.1:{port}/-/ready", workdir / "gitlab.log"
    )
    return process, f"http://127.0.0.1:{port}"


def otlp_sink(workdir: Path) -> tuple[Process, str]:
    """A trace collector (``bench/otlp_sink.py``, not started), and its OTLP/HTTP traces endpoint."""
    port = free_port()
    process = Process(["-m", "bench.otlp_sink", str(port)], f"http://127.0.0.1:{port}/-/spans", workdir / "otlp.log")
    return process, f"http://127.0.0.1:{port}/v1/traces"


def proxy_process(
    workdir: Path, name: str, gitlab_url: str, cube_url: str, key: str, **sections: dict[str, object]
) -> tuple[Process, int]:
    port = free_port()
    settings: dict[str, dict[str, object]] = {
        "server": {"port": port, "log_level": "WARNING", "shutdown_timeout": 5, "drain_delay": 0},
        "gitlab": {"url": gitlab_url, "cache_ttl": 3600.0},
        "product_analytics": {"cube_api_base_url": cube_url, "cube_api_key": key},
        "limits": {"rate_limit": 0.0},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    config = workdir / f"{name}.toml"
    config.write_text("\n".join(lines) + "\n")
    process = Process(
        ["-m", "proxy", "--config", str(config)], f"http://127.0.0.1:{port}/-/liveness", workdir / f"{name}.log"
    )
    return process, port


@dataclass
class WrkResult:
    requests: int
    seconds: float
    socket_errors: int
    timeouts: int
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / max(1, self.requests) * 1e6


def wrk(
    url: str,
    pids: list[int],
    *,
    seconds: int,
    connections: int,
    method: str = "POST",
    token: str | None = None,
    authorization: str | None = None,
    vary: bool = False,
    accept_encoding: str | None = None,
) -> WrkResult:
    """Run wrk against ``url`` and read the CPU the server processes used meanwhile."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_PATH": parts.path, "BENCH_VARY": "1" if vary else "0"}
    if token:
        env["BENCH_TOKEN"] = token
    if authorization:
        env["BENCH_AUTHORIZATION"] = authorization
    if accept_encoding:
        env["BENCH_ACCEPT_ENCODING"] = accept_encoding
    before = cpu_seconds(pids)
    started = time.monotonic()
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(ROOT / "bench" / "wrk.lua"),
            f"{parts.scheme}://{parts.netloc}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=seconds + 60,
    ).stdout
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pids) - before
    line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
    data = json.loads(line[len("BENCH_JSON ") :])
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6 or elapsed,
        socket_errors=data["socket_errors"],
        timeouts=data["timeouts"],
        non2xx=data["non2xx"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        cpu_s=cpu,
    )
