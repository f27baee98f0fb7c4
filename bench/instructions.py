"""Instructions per pass-through request, counted: repeatable where timings on a shared machine are not.

``python -m bench.instructions [--tracing] [CHECKOUT ...]`` runs each checkout's proxy (default: this one)
under valgrind's callgrind, against the fast nginx upstream and the fake GitLab. wrk
drives it at 16 connections for a short run and a long one; the difference in
instructions divided by the difference in requests is the cost of one request,
start-up and shutdown excluded. Counts repeat to within about 3%. They are user-space
instructions only (no kernel time), so compare versions of the proxy with them, not the
proxy with nginx. Needs valgrind (``apt-get install valgrind``); takes about a minute per
checkout.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import ROOT, fake_gitlab, fast_upstream, http_ok, otlp_sink, proxy_process, reference_proxy, wrk
from bench.run import KEY, LOAD, TOKEN
from stack.localstack import wait_until
from stack.nginx import port_open, write_conf

CONNECTIONS = 16


def _counted(
    command: list[str],
    cwd: Path,
    out: Path,
    ready: Callable[[], bool],
    url: str,
    seconds: int,
    stop: int,
    **wrk_args: Any,
) -> tuple[int, int]:
    """Run ``command`` under callgrind (its children too, a file each in ``out``), warm it and drive ``url`` with
    wrk for ``seconds``, stop it with ``stop``: every process's instructions added up, and the requests served."""
    out.mkdir()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/%p.out", *command],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(ready, f"{command[0]} under valgrind", 180, proc)
        wrk(url, [], seconds=1, connections=1, **wrk_args)  # warm (the proxy's auth caches)
        result = wrk(url, [], seconds=seconds, connections=CONNECTIONS, **wrk_args)
        if result.non2xx or result.socket_errors:
            raise RuntimeError(f"{command[0]} answered errors under valgrind: {result}")
        proc.send_signal(stop)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    totals = []
    for path in out.glob("*.out"):
        found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.MULTILINE)
        if found is not None:
            totals.append(int(found.group(1)))
    if not totals:
        raise RuntimeError(f"no instruction total in {out}")
    return sum(totals), result.requests


def count(
    checkout: Path,
    workdir: Path,
    gitlab_url: str,
    cube_url: str,
    seconds: int,
    server: dict[str, object],
    **sections: dict[str, object],
) -> tuple[int, int]:
    """Total instructions of one proxy (its parent and worker) that served ``seconds`` of wrk, and the requests."""
    # the benchmark's own proxy settings: auth cache warm for the run, rate limit off
    process, port = proxy_process(workdir, "counted", gitlab_url, cube_url, KEY, server=server, **sections)
    return _counted(
        [sys.executable, *process.args],
        checkout,
        workdir / f"callgrind.{port}",
        lambda: http_ok(f"http://127.0.0.1:{port}/-/liveness"),
        f"http://127.0.0.1:{port}{LOAD}",
        seconds,
        signal.SIGTERM,
        token=TOKEN,
        vary=True,
    )


def count_nginx(workdir: Path, upstream_port: int, seconds: int) -> tuple[int, int]:
    """Total instructions of nginx (its master and worker) proxying ``seconds`` of wrk, and the requests served."""
    reference = reference_proxy(workdir, upstream_port)
    root = workdir / f"nginx-counted-{seconds}"
    conf = write_conf(root, reference.server_block, reference.port, 1)
    # one process, no master: the worker's instructions are what callgrind sees (a forked worker stopped by its
    # master may never write its count)
    conf.write_text(conf.read_text().replace("master_process on;", "master_process off;"))
    return _counted(
        ["nginx", "-c", str(conf), "-p", str(root)],
        ROOT,
        workdir / f"callgrind.nginx.{seconds}",
        lambda: port_open(reference.port),
        f"http://127.0.0.1:{reference.port}/cubejs-api/v1/load",
        seconds,
        signal.SIGQUIT,  # nginx's graceful stop
    )


def nginx_per_request(workdir: Path, upstream_port: int) -> int:
    """nginx's user-space instructions per proxied request, counted as the proxy's are."""
    short_total, short_requests = count_nginx(workdir, upstream_port, 4)
    long_total, long_requests = count_nginx(workdir, upstream_port, 12)
    return round((long_total - short_total) / (long_requests - short_requests))


def per_request(
    checkout: Path,
    workdir: Path,
    gitlab_url: str,
    cube_url: str,
    server: dict[str, object],
    **sections: dict[str, object],
) -> int:
    short_total, short_requests = count(checkout, workdir, gitlab_url, cube_url, 4, server, **sections)
    long_total, long_requests = count(checkout, workdir, gitlab_url, cube_url, 12, server, **sections)
    return round((long_total - short_total) / (long_requests - short_requests))


def tracing_section(collector_url: str, ratio: float) -> dict[str, object]:
    """``[tracing]`` as a deployment sets it, sending to ``collector_url``, sampling ``ratio`` of new traces."""
    return {"enabled": True, "endpoint": collector_url, "sample_ratio": ratio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT], help="source trees to compare")
    parser.add_argument(
        "--metrics-off", action="store_true", help="also count each checkout with [server] metrics = false"
    )
    parser.add_argument("--nginx", action="store_true", help="also count nginx proxying the same requests")
    parser.add_argument(
        "--tracing", action="store_true", help="also count each checkout tracing 1%% and 100%% of its requests"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pa-proxy-instructions-") as tmp:
        workdir = Path(tmp)
        upstream = fast_upstream(workdir)
        upstream.start()
        gitlab, gitlab_url = fake_gitlab(workdir)
        gitlab.start()
        collector, collector_url = otlp_sink(workdir)
        try:
            variants: list[tuple[str, dict[str, object], dict[str, dict[str, object]]]] = [("", {}, {})]
            if args.metrics_off:
                variants.append((" with metrics off", {"metrics": False}, {}))
            if args.tracing:
                collector.start()
                for ratio in (0.01, 1.0):
                    tracing = tracing_section(collector_url, ratio)
                    variants.append((f" tracing {ratio:.0%} of its requests", {}, {"tracing": tracing}))
            if args.nginx:
                print(f"nginx: {nginx_per_request(workdir, upstream.port):,} instructions per proxied request")
            for checkout in args.checkouts:
                for label, server, sections in variants:
                    n = per_request(
                        checkout.resolve(), workdir, gitlab_url, f"http://127.0.0.1:{upstream.port}", server, **sections
                    )
                    print(f"{checkout}{label}: {n:,} instructions per pass-through request ({CONNECTIONS} connections)")
        finally:
            collector.stop()
            gitlab.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
