"""GitLab's own dashboard through the proxy, in a real browser, on the real stack (spec section 2.1).

Chromium signs in to the fake GitLab through nginx (GitLab's load balancer, one origin),
opens an analytics dashboard page that runs GitLab's client code (``@cubejs-client/core``'s
browser build, configured as ``cube_analytics.js`` configures it), and the numbers it
renders are compared with Cube's own answer for that tenant, on PostgreSQL and on ClickHouse. Another origin's page then
tries the same API with the browser's cookies and is refused, with nothing reaching Cube.
Each test runs through both front doors (``proxy`` is served both ways).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from stack.localstack import Stack, wait_until
from tests.stack.browser import chromium, load_balancer
from tests.stack.conftest import direct, stack_settings

DASHBOARD_QUERY: dict[str, Any] = {
    "measures": ["TrackedEvents.count"],
    "timeDimensions": [{"dimension": "TrackedEvents.derivedTstamp", "granularity": "day", "dateRange": "last 30 days"}],
    "order": {"TrackedEvents.derivedTstamp": "asc"},
}
LOAD_PATH = "/api/v4/projects/1/product_analytics/request/load"

ATTACKER_PAGE = """<!doctype html><html><head><title>another site</title></head><body>
<p id="fetch">pending</p>
<iframe name="sink" id="sink"></iframe>
<form id="form" target="sink" method="post" enctype="text/plain" action="{target}">
<input type="hidden" name='{{"query":{{"measures":["TrackedEvents.count"]}},"x":"' value='"}}'>
</form>
<script>
fetch("{target}", {{
  method: "POST", credentials: "include", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{query: {{measures: ["TrackedEvents.count"]}}}}),
}}).then(() => {{ document.getElementById("fetch").textContent = "read"; }},
         () => {{ document.getElementById("fetch").textContent = "refused"; }});
document.getElementById("form").submit();
</script></body></html>"""


async def sign_in(page: Any, origin: str, target: str, username: str = "alice") -> None:
    await page.goto(f"{origin}{target}")
    assert "/users/sign_in" in page.url  # not signed in yet: GitLab sends the browser to sign in
    await page.fill("#user_login", username)
    await page.fill("#user_password", "password")
    await page.click("[data-testid=sign-in-button]")
    await page.wait_for_url(f"{origin}{target}")


@pytest.fixture(params=["stack", "clickhouse_stack"], ids=["postgres", "clickhouse"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    """The real stack on each store: PostgreSQL (a schema per project) and ClickHouse (a database per project)."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
async def any_proxy(any_stack, gitlab_url, make_client):
    return await make_client(stack_settings(any_stack, gitlab_url))


async def test_gitlabs_dashboard_renders_cubes_numbers_through_the_proxy(
    any_stack, any_proxy, gitlab, gitlab_port, tmp_path
):
    stack, proxy = any_stack, any_proxy
    with load_balancer(tmp_path, proxy.server.port, gitlab_port) as origin:
        async with chromium() as context:
            page = await context.new_page()
            api_calls: list[Any] = []
            page.on("request", lambda r: api_calls.append(r) if "/product_analytics/" in r.url else None)
            await sign_in(page, origin, "/group/alpha/-/analytics/dashboards")
            status = page.locator("#status")
            await status.filter(has_not_text="loading").wait_for()
            assert await status.text_content() == "done"
            cubes = await page.locator("#cubes li").all_text_contents()
            rows = [await r.locator("td").all_text_contents() for r in await page.locator("#days tbody tr").all()]
            progress = int(await page.locator("#progress").text_content() or "0")
            posted = [(r.url.rsplit("/", 1)[1], await r.all_headers()) for r in api_calls if r.method == "POST"]

    _, meta = await direct(stack, 1, "meta")
    assert cubes == [cube["name"] for cube in meta["cubes"]]
    _, answer = await direct(stack, 1, "load", DASHBOARD_QUERY)
    at_cube = {
        row["TrackedEvents.derivedTstamp.day"]: int(row["TrackedEvents.count"]) for row in answer["results"][0]["data"]
    }
    # the client fills the range's missing days with 0 (tablePivot); every day Cube counted shows its count,
    # cast to a number (castNumerics) from Cube's string
    rendered = dict(rows)
    assert len(rendered) == len(rows) >= 30 and len(at_cube) > 10
    assert {day: f"number:{count}" for day, count in at_cube.items()}.items() <= rendered.items()
    assert all(value == "number:0" for day, value in rendered.items() if day not in at_cube)
    assert progress >= 0  # the callback was wired in (Cube answers this query without a Continue wait round)
    # what the browser sent is GitLab's shape: the session cookie, the page's CSRF token, no token
    assert {endpoint for endpoint, _ in posted} == {"meta", "load"}
    for _, headers in posted:
        assert headers["x-csrf-token"] and headers["x-requested-with"] == "XMLHttpRequest"
        assert "_gitlab_session=" in headers["cookie"]
        assert headers.get("authorization") in {None, "undefined", "1"}
    assert gitlab.calls["/api/graphql"] >= 1  # the CSRF token was confirmed with GitLab
    routed = (tmp_path / "nginx" / "logs" / "access.log").read_text().splitlines()
    assert any(
        line.startswith(f"200 POST {LOAD_PATH} session=yes upstream=127.0.0.1:{proxy.server.port}") for line in routed
    )


async def test_another_sites_page_is_refused_and_costs_cube_nothing(
    stack, proxy, gitlab, gitlab_port, aiohttp_server, tmp_path
):
    with load_balancer(tmp_path, proxy.server.port, gitlab_port) as origin:
        attacker = web.Application()
        page_html = ATTACKER_PAGE.format(target=f"{origin}{LOAD_PATH}")

        async def attacker_page(_: web.Request) -> web.Response:
            return web.Response(text=page_html, content_type="text/html")

        attacker.router.add_get("/", attacker_page)
        elsewhere = await aiohttp_server(attacker)
        async with chromium() as context:
            page = await context.new_page()
            await sign_in(page, origin, "/group/alpha/-/analytics/dashboards")
            await page.locator("#status").filter(has_not_text="loading").wait_for()
            loads_before = len(stack.cube.events("Load Request"))
            graphql_before = gitlab.calls["/api/graphql"]

            attack = await context.new_page()
            sent: list[Any] = []
            attack.on("request", lambda r: sent.append(r) if r.url.endswith(LOAD_PATH) else None)
            await attack.goto(str(elsewhere.make_url("/")))
            # the fetch settles once its answer arrived (CORS then refuses it to the page); the form's answer
            # is the frame's document
            await attack.locator("#fetch").filter(has_not_text="pending").wait_for()
            sink = attack.frame_locator("#sink").locator("body")
            await sink.filter(has_text="401").wait_for()
            form_answer = await sink.text_content()
            fetch_outcome = await attack.locator("#fetch").text_content()
            kinds = sorted(r.resource_type for r in sent)

    log = tmp_path / "nginx" / "logs" / "access.log"
    refused = f"401 POST {LOAD_PATH} session=yes"  # refused, though the browser's session cookie went along
    # nginx writes its line as it finishes the answer the browser has read: wait for that record, not a time
    wait_until(lambda: sum(line.startswith(refused) for line in log.read_text().splitlines()) >= 2, "nginx's log", 10)
    assert fetch_outcome == "refused"  # the other origin cannot read the answer, whatever it was
    assert kinds == ["document", "fetch"]
    assert form_answer == '{"message":"401 Unauthorized"}'
    assert len(stack.cube.events("Load Request")) == loads_before
    assert gitlab.calls["/api/graphql"] == graphql_before  # no CSRF token: GitLab is not even asked
    assert sum(line.startswith(refused) for line in log.read_text().splitlines()) == 2
