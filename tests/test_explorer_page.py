"""The explorer page's serving rules, through both front doors: its policy, its files, its switch.

What the page does in a browser is tested in Chromium (tests/stack/test_explorer.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from proxy.web.explorer import ASSETS, CONTENT_SECURITY_POLICY, STATIC
from tests.conftest import QUERY, REPORTER, replace

ROOT = Path(__file__).resolve().parent.parent
LOAD = "/api/v4/projects/1/product_analytics/request/load"


async def test_the_page_and_its_files_carry_a_strict_policy(client):
    # first, on a fresh connection, the API the page calls (the lane's, when it serves)
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    page = await client.get("/-/explorer")
    assert page.status == 200 and page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
    html = await page.text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html)  # no inline style, no inline handler
    for name, content_type in ASSETS.items():
        asset = await client.get(f"/-/explorer/static/{name}")
        assert asset.status == 200 and asset.content_type == content_type
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        assert await asset.read() == (STATIC / name).read_bytes()


async def test_only_the_pages_own_files_are_served(client):
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    for name in ("explorer.py", "../explorer.py", "%2e%2e/explorer.py", "vendor/%2e%2e/%2e%2e/app.py", "vendor/"):
        assert (await client.get(f"/-/explorer/static/{name}")).status == 404


async def test_the_explorer_can_be_switched_off(make_client, settings):
    client = await make_client(replace(settings, "server", explorer=False))
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    assert (await client.get("/-/explorer")).status == 404
    assert (await client.get("/-/explorer/static/explorer.js")).status == 404


async def test_the_page_says_which_credential_the_proxy_takes(make_client, settings):
    client = await make_client(replace(settings, "gitlab", sessions=False))
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    html = await (await client.get("/-/explorer")).text()
    assert 'data-sessions="off"' in html and 'data-csrf-page="/"' in html and 'data-api-root="/api/v4"' in html


def test_the_vendored_chart_library_is_the_pinned_one_with_its_licence():
    lock = json.loads((ROOT / "stack" / "explorer" / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/chart.js"]["version"]
    vendored = (STATIC / "vendor" / "chart.umd.min.js").read_text()
    assert vendored.startswith(f"/*!\n * Chart.js v{version}\n")
    assert "MIT License" in (STATIC / "vendor" / "chart.js.LICENSE.md").read_text()
