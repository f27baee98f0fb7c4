"""The status page in Chromium, on the real stack: it renders, and its numbers are the metrics' numbers."""

from __future__ import annotations

from tests.conftest import REPORTER
from tests.stack.browser import chromium
from tests.support.metrics import samples, value
from tests.support.wire import LOAD_ROUTE


async def test_the_status_page_renders_the_metrics_numbers(stack, proxy):
    for limit in (1, 2, 3):
        query = {"measures": ["TrackedEvents.count"], "limit": limit}
        load = await proxy.post(
            "/api/v4/projects/1/product_analytics/request/load", json={"query": query}, headers=REPORTER
        )
        assert load.status == 200
    found = samples(await (await proxy.get("/-/metrics")).text())
    base = str(proxy.make_url("")).rstrip("/")
    async with chromium() as context:
        page = await context.new_page()
        response = await page.goto(f"{base}/-/status")
        assert response.status == 200
        tenant = await page.locator("#tenants tbody tr").first.locator("td").all_text_contents()
        cube = await page.locator("#cubes tbody tr").first.locator("td").all_text_contents()
        auth = await page.locator("#auth-cache").text_content()
        ready = await page.locator("#ready").text_content()
    assert ready == "ready"
    loads = value(found, "pa_proxy_requests_total", route=LOAD_ROUTE, method="POST", code="200")
    assert tenant[:3] == ["1", str(int(loads)), "0"] and loads == 3  # project, requests, errors
    assert cube[0] == stack.cube.url and cube[1] == "up"
    assert int(cube[2]) == value(found, "pa_proxy_cube_calls_total", endpoint="load", outcome="data") == 3
    hits, misses = (int(n) for n in (auth or "").split(" / "))
    assert (hits, misses) == (
        value(found, "pa_proxy_auth_cache_total", result="hit"),
        value(found, "pa_proxy_auth_cache_total", result="miss"),
    )
