"""Spec sections 1 and 4: routes, what Cube receives, and the signed security context."""

import asyncio
import re
import time

import jwt
import pytest

from tests.conftest import CUBE_KEY, MAINTAINER, QUERY, REPORTER
from tests.fakes.cube import FakeCube, held_until, load_answer
from tests.support.waiting import until

LOAD_PATH = "/api/v4/projects/1/product_analytics/request/load"

BASE = "/projects/1/product_analytics/request"


@pytest.mark.parametrize("prefix", ["/api/v4", ""])
async def test_every_route_with_and_without_prefix(client, cube, prefix):
    load = await client.post(f"{prefix}{BASE}/load", json={"query": QUERY}, headers=REPORTER)
    dry = await client.post(f"{prefix}{BASE}/dry-run", json={"query": QUERY}, headers=REPORTER)
    meta_get = await client.get(f"{prefix}{BASE}/meta", headers=REPORTER)
    meta_post = await client.post(f"{prefix}{BASE}/meta", headers=REPORTER)
    assert [r.status for r in (load, dry, meta_get, meta_post)] == [200] * 4
    assert "normalizedQueries" in await dry.json()
    assert "cubes" in await meta_post.json()
    assert [(c.endpoint, c.method) for c in cube.calls] == [("load", "POST"), ("dry-run", "POST"), ("meta", "GET")]


async def test_cube_receives_exactly_query_and_query_type(client, cube):
    body = {"query": QUERY, "queryType": "regular", "include_token": False, "extra": {"x": 1}, "cookie": "c"}
    resp = await client.post(f"{BASE}/load", json=body, headers=REPORTER)
    assert resp.status == 200
    assert cube.calls[0].body == {"query": QUERY, "queryType": "regular"}
    await client.post(f"{BASE}/load", json={"query": {**QUERY, "limit": 3}}, headers=REPORTER)
    assert cube.calls[1].body == {"query": {**QUERY, "limit": 3}, "queryType": "multi"}


@pytest.mark.handed_over
async def test_credentials_cookies_and_headers_never_reach_cube(client, cube):
    headers = {
        **REPORTER,
        "Cookie": "_gitlab_session=abc",
        "X-Forwarded-For": "10.0.0.1",
        "X-Custom": "leak-me",
        "Authorization": "Bearer glpat-reporter-0000000001",
    }
    resp = await client.post(
        f"{BASE}/load?private_token=glpat-reporter-0000000001", json={"query": QUERY}, headers=headers
    )
    assert resp.status == 200
    seen = cube.calls[0].headers
    assert "glpat-reporter" not in repr(seen)
    for header in ("Cookie", "PRIVATE-TOKEN", "X-Forwarded-For", "X-Custom"):
        assert header not in seen
    assert seen["Accept-Encoding"] == "identity"
    assert seen["Authorization"].count(".") == 2  # a JWT, no "Bearer"
    assert not seen["Authorization"].startswith("Bearer")


async def test_jwt_claims_are_exactly_the_specs(client, cube):
    before = int(time.time())
    await client.post(f"{BASE}/load", json={"query": QUERY}, headers=REPORTER)
    after = int(time.time())
    token = cube.calls[0].headers["Authorization"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, CUBE_KEY, algorithms=["HS256"])
    assert set(claims) == {"iat", "exp", "appId", "iss", "gitlabToken"}
    assert before <= claims["iat"] <= after
    assert claims["exp"] == claims["iat"] + 180
    assert claims["appId"] == "gitlab_project_1"
    assert claims["iss"] == "127.0.0.1"
    assert claims["gitlabToken"] is None


async def test_project_a_caller_cannot_produce_a_jwt_for_project_b(client, cube, gitlab):
    # user 2 is a guest of project 1 only and cannot see project 2; user 1 is reporter of 1, developer of 2.
    guest = {"PRIVATE-TOKEN": "glpat-guest-000000000002"}
    for project in (2, "group%2Fsub%2Fbeta"):
        resp = await client.post(
            f"/projects/{project}/product_analytics/request/load", json={"query": QUERY}, headers=guest
        )
        assert resp.status in {401, 404}
    gitlab.projects[1].members[6] = 30
    dev = {"PRIVATE-TOKEN": "glpat-dev-00000000000006"}
    for project in (2, 5):
        resp = await client.post(
            f"/projects/{project}/product_analytics/request/load", json={"query": QUERY}, headers=dev
        )
        assert resp.status in {401, 404}
    assert cube.calls == []
    await client.post("/projects/1/product_analytics/request/load", json={"query": QUERY}, headers=dev)
    await client.post("/projects/2/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER)
    assert [c.claims["appId"] for c in cube.calls] == ["gitlab_project_1", "gitlab_project_2"]


async def test_analytics_off_for_a_project_is_404(make_settings, make_client, cube):
    client = await make_client(make_settings(projects={"1": {"enabled": False}}))
    resp = await client.post(f"{BASE}/load", json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 404
    assert await resp.json() == {"message": "Product Analytics is not enabled"}
    assert cube.calls == []


async def test_per_project_cube_with_a_path_is_kept(gitlab_url, make_client, aiohttp_server, cube):
    other = FakeCube("another-key-that-is-32-bytes-long!!", prefix="/tenant-a")
    server = await aiohttp_server(other.app())
    from proxy.settings import settings_from_mapping

    settings = settings_from_mapping(
        {
            "gitlab": {"url": gitlab_url},
            "product_analytics": {"cube_api_base_url": str(cube_url_of(cube)), "cube_api_key": CUBE_KEY},
            "projects": {"2": {"cube_api_base_url": str(server.make_url("/tenant-a/")), "cube_api_key": other.secret}},
        },
        {},
    )
    client = await make_client(settings)
    resp = await client.post("/projects/2/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 200, await resp.text()
    assert len(other.calls) == 1 and other.calls[0].claims["appId"] == "gitlab_project_2"
    assert cube.calls == []


def cube_url_of(cube):
    return "http://127.0.0.1:1"  # never used: project 2 has its own Cube


async def test_request_id_kept_or_replaced_and_returned(client, cube):
    resp = await client.post(f"{BASE}/load", json={"query": QUERY}, headers={**REPORTER, "X-Request-Id": "dash-7"})
    assert resp.headers["X-Request-Id"] == "dash-7-span-1"
    assert cube.calls[-1].headers["X-Request-Id"] == "dash-7-span-1"
    resp = await client.post(f"{BASE}/load", json={"query": QUERY}, headers={**REPORTER, "X-Request-Id": "abc-span-3"})
    assert cube.calls[-1].headers["X-Request-Id"] == "abc-span-3" == resp.headers["X-Request-Id"]
    resp = await client.post(f"{BASE}/load", json={"query": QUERY}, headers={**REPORTER, "X-Request-Id": "bad id<>"})
    fresh = resp.headers["X-Request-Id"]
    # a fresh UUID (whose hex digits may well spell "bad" by chance), not the caller's text
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-span-1", fresh)
    assert cube.calls[-1].headers["X-Request-Id"] == fresh
    resp = await client.post(f"{BASE}/load", json={"query": QUERY})
    assert resp.status == 401 and resp.headers["X-Request-Id"].endswith("-span-1")


async def test_include_token_mints_a_project_token_into_the_claim(client, cube, gitlab):
    resp = await client.post(f"{BASE}/load", json={"query": QUERY, "include_token": True}, headers=MAINTAINER)
    assert resp.status == 200
    assert "glpat-minted" not in await resp.text()
    claims = cube.calls[0].claims
    assert claims["gitlabToken"] == "glpat-minted-000000000001"
    created = gitlab.created_tokens[0]
    assert created["scopes"] == ["read_api"] and created["access_level"] == 20
    import datetime as dt

    assert created["expires_at"] == (dt.date.today() + dt.timedelta(days=1)).isoformat()
    resp = await client.post(f"{BASE}/dry-run?include_token=true", json={"query": QUERY}, headers=MAINTAINER)
    assert resp.status == 200
    assert cube.calls[1].claims["gitlabToken"] == "glpat-minted-000000000002"


async def test_include_token_refused_by_gitlab_answers_gitlabs_refusal(client, cube, gitlab):
    resp = await client.post(
        f"{BASE}/load",
        json={"query": QUERY, "include_token": True},
        headers={"PRIVATE-TOKEN": "glpat-dev-00000000000006"},
    )
    assert resp.status == 400
    assert await resp.json() == {"message": "User does not have permission to create project access token"}
    assert cube.calls == []


async def test_include_token_with_gitlab_down_is_503(client, cube, gitlab):
    assert (await client.post(f"{BASE}/load", json={"query": QUERY}, headers=MAINTAINER)).status == 200
    gitlab.fail_with = 500
    resp = await client.post(f"{BASE}/load", json={"query": QUERY, "include_token": True}, headers=MAINTAINER)
    assert resp.status == 503
    assert len(cube.calls) == 1


async def test_cube_rejecting_the_signature_is_400(make_settings, make_client, cube):
    client = await make_client(make_settings(product_analytics={"cube_api_key": "a-different-key-of-32-bytes-or-more"}))
    resp = await client.post(f"{BASE}/load", json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 400
    assert await resp.json() == {"message": "Invalid token", "error": "Invalid token"}


async def test_cookies_set_upstream_never_reach_another_call(gitlab_url, cube_url, make_client, cube, gitlab):
    from aiohttp import web

    from proxy.settings import settings_from_mapping

    # a host name, not an IP: aiohttp's default cookie jar would keep these cookies
    client = await make_client(
        settings_from_mapping(
            {
                "gitlab": {"url": gitlab_url.replace("127.0.0.1", "localhost")},
                "product_analytics": {
                    "cube_api_base_url": cube_url.replace("127.0.0.1", "localhost"),
                    "cube_api_key": CUBE_KEY,
                },
            },
            {},
        )
    )

    async def set_cookie(call, request):
        response = web.json_response(load_answer(call.body["query"], []))
        response.set_cookie("cube_session", "from-cube")
        return response

    cube.behaviour = set_cookie
    gitlab.set_cookies = True  # GitLab answers with a session cookie
    await client.post(f"{BASE}/load", json={"query": QUERY}, headers=REPORTER)
    await client.post(f"{BASE}/load", json={"query": {**QUERY, "limit": 1}}, headers=MAINTAINER)
    assert len(cube.calls) == 2
    assert "Cookie" not in cube.calls[1].headers
    assert len(gitlab.seen_headers) > 4
    assert not any("Cookie" in h for h in gitlab.seen_headers)


async def test_two_concurrent_include_token_calls_are_two_cube_calls_with_their_own_tokens(
    make_settings, make_client, cube
):
    """A personal call never joins another's flight, cache or no cache: each JWT carries its own caller's minted
    token (with the coalescer's exclusion removed, both callers got the first one's token)."""
    hold = asyncio.Event()
    cube.behaviour = held_until(hold)
    for ttl in (0.0, 60.0):  # the answer cache off, then on
        client = await make_client(make_settings(product_analytics={"answer_ttl": ttl}))
        before = len(cube.calls_to("load"))
        both = asyncio.gather(
            *(
                client.post(LOAD_PATH, json={"query": QUERY, "include_token": True}, headers=MAINTAINER)
                for _ in range(2)
            )
        )
        await until(lambda: len(cube.calls_to("load")) == before + 2)  # noqa: B023 - read while this round runs
        hold.set()
        answers = await both
        hold.clear()
        assert [a.status for a in answers] == [200, 200]
        if ttl:
            assert [a.headers["X-Cache"] for a in answers] == ["BYPASS", "BYPASS"]
        tokens = [c.claims["gitlabToken"] for c in cube.calls_to("load")[before:]]
        assert all(tokens) and tokens[0] != tokens[1]
