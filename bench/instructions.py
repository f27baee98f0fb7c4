"""Instructions per pass-through request, counted: repeatable where timings on a shared machine are not.

``python -m bench.instructions [CHECKOUT ...]`` runs each checkout's proxy (default: this one)
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
from pathlib import Path

from bench.procs import ROOT, fake_gitlab, fast_upstream, http_ok, proxy_process, reference_proxy, wrk
from bench.run import KEY, LOAD, TOKEN
from stack.localstack import wait_until
from stack.nginx import port_open, write_conf

CONNECTIONS = 16


def count(
    checkout: Path, workdir: Path, gitlab_url: str, cube_url: str, seconds: int, server: dict[str, object]
) -> tuple[int, int]:
    """Total instructions of one proxy process that served ``seconds`` of wrk, and the requests served."""
    # the benchmark's own proxy settings: auth cache warm for the run, rate limit off
    process, port = proxy_process(workdir, "counted", gitlab_url, cube_url, KEY, server=server)
    # the parent supervises and the worker serves: every process of the tree is counted (one file each)
    out = workdir / f"callgrind.{port}"
    out.mkdir()
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            f"--callgrind-out-file={out}/%p.out",
            sys.executable,
            *process.args,
        ],
        cwd=checkout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/-/liveness"), "the proxy under valgrind", 180, proc)
        url = f"http://127.0.0.1:{port}{LOAD}"
        wrk(url, [], seconds=1, connections=1, token=TOKEN, vary=True)  # warm the auth caches
        result = wrk(url, [], seconds=seconds, connections=CONNECTIONS, token=TOKEN, vary=True)
        if result.non2xx or result.socket_errors:
            raise RuntimeError(f"the proxy answered errors under valgrind: {result}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _totals(out), result.requests


def _totals(out: Path) -> int:
    """Every process's instruction total in ``out`` (one callgrind file each), added up."""
    totals = []
    for path in out.glob("*.out"):
        found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.MULTILINE)
        if found is not None:
            totals.append(int(found.group(1)))
    if not totals:
        raise RuntimeError(f"no instruction total in {out}")
    return sum(totals)


def count_nginx(workdir: Path, upstream_port: int, seconds: int) -> tuple[int, int]:
    """Total instructions of nginx (its master and worker) proxying ``seconds`` of wrk, and the requests served."""
    reference = reference_proxy(workdir, upstream_port)
    root = workdir / f"nginx-counted-{seconds}"
    conf = write_conf(root, reference.server_block, reference.port, 1)
    out = workdir / f"callgrind.nginx.{seconds}"
    out.mkdir()
    proc = subprocess.Popen(
        [
            "valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/%p.out",
            "nginx", "-c", str(conf), "-p", str(root),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: port_open(reference.port), "nginx under valgrind", 120, proc)
        url = f"http://127.0.0.1:{reference.port}/cubejs-api/v1/load"
        wrk(url, [], seconds=1, connections=1)
        result = wrk(url, [], seconds=seconds, connections=CONNECTIONS)
        if result.non2xx or result.socket_errors:
            raise RuntimeError(f"nginx answered errors under valgrind: {result}")
        proc.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _totals(out), result.requests


def nginx_per_request(workdir: Path, upstream_port: int) -> int:
    """nginx's user-space instructions per proxied request, counted as the proxy's are."""
    short_total, short_requests = count_nginx(workdir, upstream_port, 4)
    long_total, long_requests = count_nginx(workdir, upstream_port, 12)
    return round((long_total - short_total) / (long_requests - short_requests))


def per_request(checkout: Path, workdir: Path, gitlab_url: str, cube_url: str, server: dict[str, object]) -> int:
    short_total, short_requests = count(checkout, workdir, gitlab_url, cube_url, 4, server)
    long_total, long_requests = count(checkout, workdir, gitlab_url, cube_url, 12, server)
    return round((long_total - short_total) / (long_requests - short_requests))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT], help="source trees to compare")
    parser.add_argument(
        "--metrics-off", action="store_true", help="also count each checkout with [server] metrics = false"
    )
    parser.add_argument("--nginx", action="store_true", help="also count nginx proxying the same requests")
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
        try:
            variants: list[tuple[str, dict[str, object]]] = [("", {})]
            if args.metrics_off:
                variants.append((" with metrics off", {"metrics": False}))
            if args.nginx:
                print(f"nginx: {nginx_per_request(workdir, upstream.port):,} instructions per proxied request")
            for checkout in args.checkouts:
                for label, server in variants:
                    n = per_request(
                        checkout.resolve(), workdir, gitlab_url, f"http://127.0.0.1:{upstream.port}", server
                    )
                    print(f"{checkout}{label}: {n:,} instructions per pass-through request ({CONNECTIONS} connections)")
        finally:
            gitlab.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
