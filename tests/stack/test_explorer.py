"""The query explorer page in Chromium, on the real stack: Cube's answers as the page shows them.

The browser reaches the proxy through nginx, as GitLab's load balancer (the explorer and the
analytics API routed to the proxy, the rest to the fake GitLab). nginx opens a connection to
the proxy per request, so each test runs through both front doors for real: the page and its
files are aiohttp's (GET), and the page's load and dry-run calls (POST, no query string) the
fast lane's. (A browser talking to the lane directly would reuse a connection that began with
a GET, which the lane hands to aiohttp whole.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.web.explorer import CONTENT_SECURITY_POLICY
from stack.localstack import PLANTED_MARKUP
from tests.conftest import REPORTER
from tests.stack.browser import chromium, load_balancer
from tests.stack.conftest import direct

DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = REPORTER["PRIVATE-TOKEN"]


@pytest.fixture
def origin(proxy, gitlab_port, tmp_path) -> Iterator[str]:
    """GitLab's origin: nginx in front of the proxy and the fake GitLab."""
    with load_balancer(tmp_path, proxy.server.port, gitlab_port) as url:
        yield url


async def open_explorer(context: Any, base: str, project: str, token: str | None = TOKEN) -> tuple[Any, Any]:
    page = await context.new_page()
    response = await page.goto(f"{base}/-/explorer")
    await page.fill("#project", project)
    await page.dispatch_event("#project", "change")
    if token is not None:
        await page.fill("#token", token)
        await page.click("#save-token")
    return page, response


async def finished(page: Any, what: str) -> str:
    """Wait for the call's outcome in the status line (done or failed); return the status."""
    status = page.locator("#status")
    await status.filter(has_text=f"{what}: ").wait_for()
    return str(await status.text_content())


async def show_cubes(page: Any) -> list[str]:
    await page.click("#load-meta")
    assert (await finished(page, "meta")).startswith("meta: done"), await page.locator("#error").text_content()
    return [name.strip() for name in await page.locator("#cubes li strong").all_text_contents()]


async def table(page: Any) -> tuple[list[str], list[list[str]]]:
    head = await page.locator("#rows thead th").all_text_contents()
    rows = [await row.locator("td").all_text_contents() for row in await page.locator("#rows tbody tr").all()]
    return head, rows


def as_cells(head: list[str], data: list[dict[str, Any]]) -> list[list[str]]:
    return [["" if row.get(column) is None else str(row[column]) for column in head] for row in data]


async def test_the_explorer_lists_cubes_runs_a_query_and_draws_it(stack, origin):
    base = origin
    async with chromium() as context:
        page, response = await open_explorer(context, base, "1")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert await page.evaluate("sessionStorage.getItem('product-analytics-explorer-token')") == TOKEN
        assert await page.input_value("#token") == ""  # kept in the tab's storage, not on the page
        cubes = await show_cubes(page)

        await page.select_option("#measures", ["TrackedEvents.count"])
        await page.select_option("#time-dimension", "TrackedEvents.derivedTstamp")
        await page.select_option("#granularity", "day")
        await page.fill("#date-range", "last 14 days")
        await page.dispatch_event("#date-range", "change")
        query = json.loads(await page.input_value("#query"))
        await page.click("#dry-run")
        assert (await finished(page, "dry-run")).startswith("dry-run: done")
        normalized = json.loads(await page.locator("#normalized").text_content() or "null")
        await page.click("#run")
        assert (await finished(page, "load")).startswith("load: done"), await page.locator("#error").text_content()
        head, rows = await table(page)
        drawn = await page.evaluate(
            """() => {
                const canvas = document.getElementById('chart');
                const chart = window.Chart.getChart(canvas);
                const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                let painted = 0;
                for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted += 1;
                return { points: chart ? chart.data.datasets[0].data.length : 0, painted };
            }"""
        )
        assert page.url == f"{base}/-/explorer"  # the token never went into a URL
        DOCS.mkdir(exist_ok=True)
        await page.screenshot(path=str(DOCS / "explorer.png"), full_page=True)

    _, meta = await direct(stack, 1, "meta")
    assert cubes == [cube["name"] for cube in meta["cubes"]] and "TrackedEvents" in cubes
    assert query["timeDimensions"] == [
        {"dimension": "TrackedEvents.derivedTstamp", "granularity": "day", "dateRange": "last 14 days"}
    ]
    _, dry = await direct(stack, 1, "dry-run", query)
    assert normalized == dry["normalizedQueries"]
    _, answer = await direct(stack, 1, "load", query)
    data = answer["results"][0]["data"]
    assert data and rows == as_cells(head, data)
    assert set(head) == set(data[0])
    assert drawn["points"] == len(data) and drawn["painted"] > 1000


async def test_a_bad_query_shows_the_apis_message(stack, proxy, origin):
    base = origin
    bad = {"measures": ["TrackedEvents.noSuchMeasure"]}
    expected = await proxy.post(
        "/api/v4/projects/1/product_analytics/request/load", json={"query": bad}, headers=REPORTER
    )
    message = (await expected.json())["message"]
    async with chromium() as context:
        page, _ = await open_explorer(context, base, "group/alpha")  # a project by its full path
        await page.fill("#query", json.dumps(bad))
        await page.click("#run")
        assert await finished(page, "load") == "load: failed"
        shown = await page.locator("#error").text_content()
        await page.fill("#query", '{"measures": ["TrackedEvents.count"], "limit": 60000}')
        await page.click("#dry-run")
        assert await finished(page, "dry-run") == "dry-run: failed"
        too_many = await page.locator("#error").text_content()
    assert expected.status == 400 and "noSuchMeasure" in message
    assert shown == f"400: {message}"
    assert too_many is not None and too_many.startswith("400: ") and "50000" in too_many


async def test_cubes_values_are_shown_as_text_and_run_nothing(stack, origin):
    base = origin
    async with chromium() as context:
        page, _ = await open_explorer(context, base, "2")
        await show_cubes(page)
        await page.fill(
            "#query", json.dumps({"measures": ["TrackedEvents.count"], "dimensions": ["TrackedEvents.pageTitle"]})
        )
        await page.click("#run")
        assert (await finished(page, "load")).startswith("load: done"), await page.locator("#error").text_content()
        cells = await page.locator("#rows tbody td").all_text_contents()
        images = await page.locator("img").count()
        title = await page.title()
    assert PLANTED_MARKUP in cells  # the markup, as text
    assert images == 0 and title == "Product analytics explorer"  # no element made of it, no handler run


async def test_the_explorer_on_gitlabs_origin_uses_the_session(stack, gitlab, origin):
    async with chromium() as context:
        signin = await context.new_page()
        await signin.goto(f"{origin}/users/sign_in")
        await signin.fill("#user_login", "alice")
        await signin.fill("#user_password", "password")
        await signin.click("[data-testid=sign-in-button]")
        await signin.wait_for_url(f"{origin}/")
        page, _ = await open_explorer(context, origin, "1", token=None)
        assert "GitLab session" in (await page.locator("#credential").text_content() or "")
        cubes = await show_cubes(page)
        await page.fill("#query", json.dumps({"measures": ["TrackedEvents.count"]}))
        await page.click("#run")
        assert (await finished(page, "load")).startswith("load: done"), await page.locator("#error").text_content()
        _, rows = await table(page)
    _, answer = await direct(stack, 1, "load", {"measures": ["TrackedEvents.count"]})
    assert rows == [[answer["results"][0]["data"][0]["TrackedEvents.count"]]]
    assert "TrackedEvents" in cubes
    assert gitlab.calls["/api/graphql"] == 1  # the CSRF token the explorer read from GitLab's page was confirmed


async def test_the_explorer_shows_cubes_continue_wait_rounds_then_the_answer(
    stack, gitlab_url, gitlab_port, make_client, tmp_path
):
    from tests.stack.conftest import CUBE_HOLD, stack_settings
    from tests.support.real_stack import fresh_slow_query

    # the proxy passes Cube's "Continue wait" straight on (no server-side wait): the page asks again
    proxy = await make_client(stack_settings(stack, gitlab_url, continue_wait_budget=CUBE_HOLD / 2))
    query = fresh_slow_query()
    with load_balancer(tmp_path, proxy.server.port, gitlab_port) as origin:
        async with chromium() as context:
            page, _ = await open_explorer(context, origin, "1")
            await page.fill("#query", json.dumps(query))
            await page.click("#run")
            await page.locator("#status").filter(has_text="Continue wait, round 1").wait_for()
            assert (await finished(page, "load")).startswith("load: done"), await page.locator("#error").text_content()
            _, rows = await table(page)
    assert rows == [["0"]]  # SlowQueries.count, after the slow cube's pg_sleep
