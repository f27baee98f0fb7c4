"""Answers on the wire, measured (``make bench``; alone: ``python -m bench.compression``).

- CPU per request of a dashboard panel (14 KB of JSON) answered gzipped from the answer cache,
  next to the plain pass-through (no cache, no gzip), the pass-through gzipped per request,
  and nginx's own gzip (level 1, ``gzip_types application/json``) in front of the same upstream;
  all in one run, as ratios.
- Bytes on the wire for that panel, plain and gzipped; answers a 4 MiB answer cache holds of
  such panels, kept plain (as before) and compressed (now); the cost of compressing and
  inflating one at each level used.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from bench.procs import Nginx, fake_gitlab, proxy_process, wrk
from proxy.caching.answer_cache import ENTRY_OVERHEAD, AnswerCache, AnswerKey
from proxy.cube.tenants import Tenant
from proxy.encoding import KEPT_LEVEL, WHOLE_LEVEL

KEY = "benchmark-cube-api-key-0123456789abcdef"
TOKEN = "glpat-reporter-0000000001"
LOAD = "/api/v4/projects/1/product_analytics/request/load"


def panel_body() -> bytes:
    """A typical panel's answer: a count per day and page over 30 days (about 14 KB)."""
    rows = [
        {
            "TrackedEvents.derivedTstamp.day": f"2026-11-{1 + day:02d}T00:00:00.000",
            "TrackedEvents.derivedTstamp": f"2026-11-{1 + day:02d}T00:00:00.000",
            "TrackedEvents.pageUrlpath": f"/docs/page-{page}",
            "TrackedEvents.count": str((day * 7 + page * 13) % 97),
        }
        for day in range(30)
        for page in range(6)
    ]
    answer = {"queryType": "regularQuery", "results": [{"query": {"measures": ["TrackedEvents.count"]}, "data": rows}]}
    return json.dumps(answer, separators=(",", ":")).encode()


def _upstream(workdir: Path, body: bytes) -> Nginx:
    """nginx answering every call with the panel (a static file: nginx refuses a POST to one with 405, which
    ``error_page`` turns into the file itself)."""
    (workdir / "panel.json").write_bytes(body)
    workdir.chmod(0o755)  # nginx's workers run as another user
    (workdir / "panel.json").chmod(0o644)
    return Nginx(
        workdir,
        "panel-upstream",
        f"""
        server {{
            listen 127.0.0.1:PORT reuseport backlog=8192;
            root {workdir};
            default_type application/json;
            location = /panel.json {{ }}
            location / {{ error_page 405 =200 /panel.json; return 405; }}
        }}
        """,
    )


def _nginx_gzip(workdir: Path, upstream_port: int) -> Nginx:
    return Nginx(
        workdir,
        "nginx-gzip",
        f"""
        upstream cube {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
        server {{
            listen 127.0.0.1:PORT backlog=8192;
            gzip on; gzip_comp_level 1; gzip_min_length 1024; gzip_types application/json; gzip_proxied any;
            location / {{ proxy_pass http://cube; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        }}
        """,
    )


def wire_bytes(port: int, body: bytes) -> dict[str, int]:
    """One panel through the proxy, as bytes on the wire, plain and gzipped."""
    sizes = {}
    for coding in ("identity", "gzip"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{LOAD}",
            data=b'{"query":{"measures":["TrackedEvents.count"]}}',
            headers={"PRIVATE-TOKEN": TOKEN, "Content-Type": "application/json", "Accept-Encoding": coding},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
        sizes[coding] = len(raw)
        assert (zlib.decompress(raw, 31) if coding == "gzip" else raw) == body
    return sizes


def cache_capacity(body: bytes, budget: int = 4 * 1024 * 1024) -> dict[str, int]:
    """Answers of ``body``'s kind a ``budget``-byte answer cache holds: plain, as before, and compressed, as now."""
    tenant = Tenant(1, "gitlab_project_1", "http://cube", KEY, answer_ttl=60.0)
    cache = AnswerCache(budget, len(body), clock=lambda: 0.0)
    n = 0
    while cache.evictions == 0:
        cache.put(AnswerKey(tenant, "load", b"q%d" % n), body)
        n += 1
    return {"plain": budget // (len(body) + ENTRY_OVERHEAD), "compressed": len(cache)}


def level_costs(body: bytes, rounds: int = 200) -> dict[str, float]:
    """Microseconds to compress the panel at each level used, and to inflate it."""
    costs: dict[str, float] = {}
    for name, level in (("whole_level", WHOLE_LEVEL), ("kept_level", KEPT_LEVEL)):
        started = time.process_time()
        for _ in range(rounds):
            packer = zlib.compressobj(level, zlib.DEFLATED, 31)
            packed = packer.compress(body) + packer.flush()
        costs[f"{name}_us"] = round((time.process_time() - started) / rounds * 1e6, 1)
        costs[f"{name}_bytes"] = len(packed)
    started = time.process_time()
    for _ in range(rounds):
        zlib.decompress(packed, 31)
    costs["inflate_us"] = round((time.process_time() - started) / rounds * 1e6, 1)
    return costs


def compression(workdir: Path, gitlab_url: str, seconds: int = 3, rounds: int = 3) -> dict[str, Any]:
    body = panel_body()
    upstream = _upstream(workdir, body)
    upstream.start()
    nginx = _nginx_gzip(workdir, upstream.port)
    nginx.start()
    cube_url = f"http://127.0.0.1:{upstream.port}"
    passing, passing_port = proxy_process(workdir, "proxy-panel", gitlab_url, cube_url, KEY)
    hits, hits_port = proxy_process(
        workdir, "proxy-panel-hits", gitlab_url, cube_url, KEY, product_analytics={"answer_ttl": 3600.0}
    )
    try:
        passing.start()
        hits.start()
        for port in (passing_port, hits_port):  # warm: the auth caches, the answer cache's one entry
            wrk(f"http://127.0.0.1:{port}{LOAD}", [], seconds=1, connections=4, token=TOKEN, accept_encoding="gzip")

        def one_round() -> dict[str, Any]:
            def run(port: int, pids: list[int], coding: str | None, **extra: Any) -> Any:
                url = f"http://127.0.0.1:{port}{LOAD}"
                return wrk(url, pids, seconds=seconds, connections=32, accept_encoding=coding, **extra)

            return {
                "pass_through_plain": run(passing_port, passing.pids, None, token=TOKEN),
                "pass_through_gzip": run(passing_port, passing.pids, "gzip", token=TOKEN),
                "hit_gzip": run(hits_port, hits.pids, "gzip", token=TOKEN),
                "hit_plain": run(hits_port, hits.pids, None, token=TOKEN),
                "nginx_plain": run(nginx.port, nginx.pids, None),
                "nginx_gzip": run(nginx.port, nginx.pids, "gzip"),
            }

        runs = [one_round() for _ in range(rounds)]

        def ratio(top: str, bottom: str) -> float:
            values = sorted(run[top].cpu_us_per_request / run[bottom].cpu_us_per_request for run in runs)
            return round(values[len(values) // 2], 3)

        cpu = {key: round(sorted(run[key].cpu_us_per_request for run in runs)[len(runs) // 2], 1) for key in runs[0]}
        sizes = wire_bytes(hits_port, body)
        capacity = cache_capacity(body)
        return {
            "rounds": rounds,
            "panel_bytes": len(body),
            "cpu_us_per_request": cpu,
            "compressed_hit_vs_plain_pass_through_cpu": ratio("hit_gzip", "pass_through_plain"),
            "compressed_hit_vs_nginx_gzip_cpu": ratio("hit_gzip", "nginx_gzip"),
            "gzip_pass_through_vs_plain_cpu": ratio("pass_through_gzip", "pass_through_plain"),
            "nginx_gzip_vs_plain_cpu": ratio("nginx_gzip", "nginx_plain"),
            "panel_wire_bytes": sizes,
            "panel_wire_ratio": round(sizes["identity"] / sizes["gzip"], 1),
            "cache_answers_4mib": capacity,
            "cache_capacity_ratio": round(capacity["compressed"] / capacity["plain"], 1),
            "levels": level_costs(body),
        }
    finally:
        for process in (passing, hits, nginx, upstream):
            process.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pa-bench-compression-") as tmp:
        workdir = Path(tmp)
        gitlab, gitlab_url = fake_gitlab(workdir)
        gitlab.start()
        try:
            print(json.dumps(compression(workdir, gitlab_url), indent=2))
        finally:
            gitlab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
