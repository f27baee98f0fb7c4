"""``make run``: PostgreSQL, demo data, Cube and the proxy on loopback; Ctrl-C stops all of it."""

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

from proxy.settings import load_settings
from stack.localstack import running_stack, wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "dev-maintainer-token-0001"
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
    # an inherited SIG_IGN would leave PostgreSQL, Cube and the proxy running after the caller gave up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "config" / "local.toml"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("STACK_PG_PORT", "54329")))
    parser.add_argument("--workdir", default=os.environ.get("STACK_DIR", "/tmp/product-analytics-proxy-stack"))
    args = parser.parse_args()
    settings = load_settings(args.config)
    cube_url = yarl.URL(settings.product_analytics.cube_api_base_url or "http://127.0.0.1:4000")
    key = settings.product_analytics.cube_api_key or ""
    proxy_url = f"http://{settings.server.host}:{settings.server.port}"

    print("starting PostgreSQL and Cube ...", flush=True)
    with running_stack(key, Path(args.workdir), pg_port=args.pg_port, cube_port=cube_url.port) as stack:
        print(
            f"PostgreSQL on 127.0.0.1:{stack.pg.port}, demo events {stack.rows}; Cube on {stack.cube.url}", flush=True
        )
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", args.config], cwd=ROOT)
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
