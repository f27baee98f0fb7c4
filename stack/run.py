"""``make run``: PostgreSQL (or ClickHouse: ``--store clickhouse``), demo data, Cube and the proxy on loopback.

Ctrl-C stops all of it. A port the stack's own servers want that is taken is replaced by a free one (said in
a line); the proxy's own port, the one the printed ``curl`` uses, is not: that is one line saying what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yarl

from proxy.settings import SettingsError, load_settings
from stack.localstack import STORES, free_port, port_free, running_stack, wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "dev-maintainer-token-0001"
STORE_NAMES = {"postgres": "PostgreSQL", "clickhouse": "ClickHouse"}
QUERY = {
    "query": {
        "measures": ["TrackedEvents.count"],
        "timeDimensions": [
            {"dimension": "TrackedEvents.derivedTstamp", "granularity": "day", "dateRange": "last 7 days"}
        ],
        "order": {"TrackedEvents.derivedTstamp": "asc"},
    }
}


def main() -> int:
    # Ctrl-C stops the stack even when started from a shell that ignores SIGINT (as it does for background jobs):
    # an inherited SIG_IGN would leave the database, Cube and the proxy running after the caller gave up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "config" / "local.toml"))
    parser.add_argument("--store", choices=STORES, default=os.environ.get("STORE", "postgres"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("STACK_PG_PORT", "54329")))
    parser.add_argument("--clickhouse-port", type=int, default=int(os.environ.get("STACK_CLICKHOUSE_PORT", "18123")))
    parser.add_argument("--workdir", default=os.environ.get("STACK_DIR", "/tmp/product-analytics-proxy-stack"))
    args = parser.parse_args()
    try:
        return run(args)
    except (RuntimeError, SettingsError, OSError) as exc:  # an expected failure: one line, no traceback
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        return 1


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    cube_url = yarl.URL(settings.product_analytics.cube_api_base_url or "http://127.0.0.1:4000")
    key = settings.product_analytics.cube_api_key or ""
    proxy_url = f"http://{settings.server.host}:{settings.server.port}"
    if not port_free(settings.server.port, settings.server.host):
        raise RuntimeError(
            f"port {settings.server.port} (the proxy's, [server] port in {args.config}) is in use by another"
            f" process: stop it, or run the proxy on another port: PROXY_SERVER__PORT=8081 make run"
        )
    env = dict(os.environ)
    cube_port = _own_port(cube_url.port or 4000, "Cube's (another Cube, perhaps)")
    if cube_port != cube_url.port:
        env["PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL"] = str(cube_url.with_port(cube_port))
    default_store_port = args.clickhouse_port if args.store == "clickhouse" else args.pg_port
    store_port = _own_port(default_store_port, "the database's")
    workdir = Path(args.workdir)

    print(f"starting {STORE_NAMES[args.store]} and Cube ...", flush=True)
    with running_stack(key, workdir, pg_port=store_port, cube_port=cube_port, store=args.store) as stack:
        print(
            f"{STORE_NAMES[args.store]} on 127.0.0.1:{store_port}, demo events {stack.rows}; Cube on {stack.cube.url}",
            flush=True,
        )
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", args.config], cwd=ROOT, env=env)
        try:
            wait_until(lambda: _ready(proxy_url), "the proxy", 30, proxy)
            url = f"{proxy_url}/api/v4/projects/1/product_analytics/request/load"
            body = json.dumps(QUERY)
            print(
                f"\nThe proxy is ready at {proxy_url}\n\nTry it (project 1; project 2 is the other demo tenant):\n\n"
                f"  curl -s -H 'PRIVATE-TOKEN: {TOKEN}' -H 'Content-Type: application/json' \\\n"
                f"    -d '{body}' \\\n    {url}\n",
                flush=True,
            )
            print(f"It answers now: {_sample(url, body)}\n", flush=True)
            print(
                f"The query explorer: {proxy_url}/-/explorer\n"
                f"  (project 1, and paste the dev token {TOKEN} into its token field)\n\nCtrl-C stops everything.",
                flush=True,
            )
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            proxy.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if proxy.poll() is None:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(30)
    print("stopped.")
    return 0


def _own_port(port: int, whose: str) -> int:
    """``port`` when nothing listens there; a free one otherwise, said in one line (the stack's own servers only)."""
    if port_free(port):
        return port
    chosen = free_port()
    print(f"port {port} ({whose}) is in use by another process: using {chosen} instead", flush=True)
    return chosen


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/readiness", timeout=2) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _sample(url: str, body: str) -> str:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=body.encode(), headers={"PRIVATE-TOKEN": TOKEN, "Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
        data = json.loads(resp.read())
    rows = data["results"][0]["data"]
    days = ", ".join(f"{r['TrackedEvents.derivedTstamp.day'][:10]}: {r['TrackedEvents.count']}" for r in rows)
    return f"{days} ({(time.monotonic() - started) * 1000:.0f} ms)"


if __name__ == "__main__":
    sys.exit(main())
