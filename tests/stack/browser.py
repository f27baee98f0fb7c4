"""Debian's Chromium under Playwright, and nginx as GitLab's load balancer: the production shape for browser tests.

nginx serves one origin: ``/api/v4/projects/*/product_analytics/request/`` goes to the proxy,
everything else to the fake GitLab (as GitLab's own load balancer would route it). Chromium
is Debian's (``/usr/bin/chromium``), driven by Playwright for Python without a browser download.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from stack.localstack import free_port, stop_process
from stack.nginx import start_nginx

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: as the machine's own check runs it: no sandbox (root), and nothing that calls out of this closed network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: the location block docs/deployment.md gives GitLab's nginx (Omnibus), as shipped: this load balancer runs it
GITLAB_SNIPPET = Path(__file__).resolve().parents[2] / "deploy" / "gitlab" / "product-analytics.nginx.conf"
SNIPPET_UPSTREAM = "http://product-analytics-proxy:8080"

LOAD_BALANCER = """
map $cookie__gitlab_session $has_session {{ "" no; default yes; }}
log_format routed '$status $request_method $request_uri session=$has_session upstream=$upstream_addr';
server {{
    listen 127.0.0.1:PORT;
    access_log {root}/logs/access.log routed;
    location /-/explorer {{
        proxy_pass http://127.0.0.1:{proxy_port};
        proxy_set_header Host $http_host;
    }}
    ANALYTICS
    location / {{
        proxy_pass http://127.0.0.1:{gitlab_port};
        proxy_set_header Host $http_host;
    }}
}}
"""


@contextlib.contextmanager
def load_balancer(workdir: Path, proxy_port: int, gitlab_port: int) -> Iterator[str]:
    """nginx routing the analytics API to the proxy and the rest to GitLab; yields its origin."""
    root = workdir / "nginx"
    port = free_port()
    analytics = GITLAB_SNIPPET.read_text().replace(SNIPPET_UPSTREAM, f"http://127.0.0.1:{proxy_port}")
    block = LOAD_BALANCER.format(root=root, proxy_port=proxy_port, gitlab_port=gitlab_port)
    block = block.replace("ANALYTICS", analytics)
    proc: subprocess.Popen[bytes] | None = start_nginx(root, block, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, 10)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[object]:
    """A fresh headless Chromium (its own empty profile) and a new context in it; closed on the way out."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context()
            yield context
        finally:
            await browser.close()
