"""Spec section 2.1, rule by rule: GitLab's browser session as the credential, through both front doors.

The fake GitLab keeps sessions as GitLab does: a signed-in session has a CSRF secret, pages
carry masked CSRF tokens for it, and GraphQL's ``currentUser`` is null unless the CSRF token
fits the session. Every test here runs through aiohttp and through the fast lane (``client``).
"""

from __future__ import annotations

import asyncio
import logging

import jwt
import pytest

from proxy.auth.authorizer import GitLabAuthorizer
from proxy.auth.credentials import Credential, extract_credential
from proxy.errors import ApiError
from proxy.observe.metrics import Metrics
from proxy.settings import GitLabSettings
from tests.conftest import CUBE_KEY, QUERY, REPORTER, replace
from tests.fakes.gitlab import SESSION_COOKIE, FakeGitLab
from tests.support.sessions import ALICE, BROWSER, GARY, MO, browser, cookie, post_load

META = "/api/v4/projects/{}/product_analytics/request/meta"


@pytest.mark.handed_over  # GET: the lane serves POST only
async def test_get_meta_with_the_cookie_alone(client, gitlab, cube):
    session = gitlab.sign_in(ALICE)
    resp = await client.get(META.format(1), headers={**BROWSER, **cookie(session)})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["cubes"][0]["name"] == "TrackedEvents"
    assert gitlab.calls["/api/graphql"] == 0  # a GET needs no CSRF token


async def test_post_with_the_pages_csrf_token(client, gitlab, cube):
    session = gitlab.sign_in(ALICE)
    resp = await post_load(client, browser(gitlab, session))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["results"][0]["data"] == cube.rows
    assert cube.calls[0].claims["appId"] == "gitlab_project_1"
    assert gitlab.calls["/api/graphql"] == 1


@pytest.mark.handed_over  # meta: aiohttp serves it behind the lane
async def test_post_meta_needs_the_csrf_token_too(client, gitlab, cube):
    session = gitlab.sign_in(ALICE)
    refused = await client.post(META.format(1), json={}, headers={**BROWSER, **cookie(session)})
    assert refused.status == 401
    served = await client.post(META.format(1), json={}, headers=browser(gitlab, session))
    assert served.status == 200
    assert len(cube.calls_to("meta")) == 1


@pytest.mark.parametrize("csrf", ["missing", "wrong", "another sessions", "malformed"])
async def test_a_post_without_the_sessions_own_csrf_token_is_401_and_costs_cube_nothing(client, gitlab, cube, csrf):
    session = gitlab.sign_in(ALICE)
    headers = {**BROWSER, **cookie(session)}
    if csrf == "wrong":
        headers["X-CSRF-Token"] = "A" * 88
    elif csrf == "another sessions":
        headers["X-CSRF-Token"] = gitlab.csrf_token(gitlab.sign_in(ALICE))
    elif csrf == "malformed":
        headers["X-CSRF-Token"] = "not a token"
    resp = await post_load(client, headers)
    assert resp.status == 401
    assert await resp.json() == {"message": "401 Unauthorized"}
    assert cube.calls == []
    # with no token worth asking about, GitLab is not asked either
    assert gitlab.calls["/api/graphql"] == (1 if csrf in {"wrong", "another sessions"} else 0)


async def test_a_token_and_a_cookie_the_token_decides(client, gitlab, cube):
    gary = gitlab.sign_in(GARY)  # a guest of project 1: his session alone is refused
    resp = await post_load(client, {**REPORTER, **browser(gitlab, gary)})
    assert resp.status == 200
    alice = gitlab.sign_in(ALICE)
    resp = await post_load(client, {"PRIVATE-TOKEN": "glpat-guest-000000000002", **browser(gitlab, alice)})
    assert resp.status == 401
    assert await resp.json() == {"message": "Access Denied"}
    assert gitlab.calls["/api/graphql"] == 0  # the session was never looked at
    assert len(cube.calls) == 1


@pytest.mark.parametrize(
    "token", [{"PRIVATE-TOKEN": "glpat-unknown-00000001"}, {"Authorization": "Bearer glpat-revoked-0000000001"}]
)
async def test_a_rejected_token_with_a_good_cookie_is_401(client, gitlab, cube, token):
    session = gitlab.sign_in(ALICE)
    resp = await post_load(client, {**browser(gitlab, session), **token})
    assert resp.status == 401
    assert cube.calls == []


@pytest.mark.parametrize("authorization", ["undefined", "Basic YWxpY2U6c2VjcmV0", "Negotiate abc", ""])
async def test_a_non_bearer_authorization_header_is_ignored(client, gitlab, cube, authorization):
    session = gitlab.sign_in(ALICE)
    resp = await post_load(client, {**browser(gitlab, session), "Authorization": authorization})
    assert resp.status == 200, await resp.text()


async def test_a_non_bearer_authorization_without_a_session_is_401(client, gitlab):
    resp = await post_load(client, {"Authorization": "undefined"})
    assert resp.status == 401
    assert sum(gitlab.calls.values()) == 0


async def test_only_the_session_cookie_reaches_gitlab(client, gitlab, cube):
    session = gitlab.sign_in(ALICE)
    others = ("known_sign_in=abc123", "preferred_language=en", "_ga=GA1.1.99")
    headers = {**browser(gitlab, session), **cookie(session, *others)}
    resp = await post_load(client, headers)
    assert resp.status == 200
    sent = [seen.get("Cookie") for seen in gitlab.seen_headers]
    assert sent and all(value == f"{SESSION_COOKIE}={session}" for value in sent)
    # the CSRF token goes to GraphQL only (the one call that needs it)
    with_csrf = [seen for seen in gitlab.seen_headers if "X-CSRF-Token" in seen]
    assert len(with_csrf) == gitlab.calls["/api/graphql"] == 1


async def test_no_cookie_and_no_csrf_token_reaches_cube_a_log_or_an_error(client, gitlab, cube, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    session = gitlab.sign_in(ALICE)
    csrf = gitlab.csrf_token(session)
    headers = {**browser(gitlab, session, csrf), **cookie(session, "other=cookie-value-xyz")}
    ok = await post_load(client, headers)
    refused = await post_load(client, {**headers, "X-CSRF-Token": csrf[:-4] + "AAAA"}, project=2)
    bad = await post_load(client, headers, body={"query": "not an object"})
    texts = [await ok.text(), await refused.text(), await bad.text()]
    assert [ok.status, refused.status, bad.status] == [200, 401, 400]
    for secret in (session, csrf, "cookie-value-xyz"):
        for call in cube.calls:
            assert secret not in str(dict(call.headers)) and secret not in str(call.body)
            assert secret not in str(call.claims)
        assert all(secret not in text for text in texts)
        assert secret not in caplog.text
        assert secret not in capsys.readouterr().err


async def test_a_signed_out_session_stops_at_once_without_a_cache(make_client, settings, gitlab, cube):
    client = await make_client(replace(settings, "gitlab", cache_ttl=0.0, negative_cache_ttl=0.0))
    session = gitlab.sign_in(ALICE)
    assert (await post_load(client, browser(gitlab, session))).status == 200
    gitlab.sign_out(session)
    resp = await post_load(client, browser(gitlab, session))
    assert resp.status == 401
    assert len(cube.calls) == 1


async def test_sessions_off_refuses_the_cookie(make_client, settings, gitlab, cube):
    client = await make_client(replace(settings, "gitlab", sessions=False))
    session = gitlab.sign_in(ALICE)
    resp = await post_load(client, browser(gitlab, session))
    assert resp.status == 401
    assert sum(gitlab.calls.values()) == 0


async def test_the_cookie_name_is_a_setting(make_client, settings, gitlab, cube):
    client = await make_client(replace(settings, "gitlab", session_cookie="_gitlab_session_abc"))
    session = gitlab.sign_in(ALICE)
    # GitLab is asked with the configured name; the fake knows its default name only, so it answers 401
    resp = await post_load(client, {**BROWSER, "Cookie": f"_gitlab_session_abc={session}", "X-CSRF-Token": "x" * 8})
    assert resp.status == 401
    assert [seen.get("Cookie") for seen in gitlab.seen_headers] == [f"_gitlab_session_abc={session}"]
    unnamed = await post_load(client, browser(gitlab, session))  # the default name is no credential here
    assert unnamed.status == 401
    assert len(gitlab.seen_headers) == 1


async def test_project_and_role_checks_apply_to_sessions(client, gitlab, cube):
    gary = await post_load(client, browser(gitlab, gitlab.sign_in(GARY)))
    assert (gary.status, await gary.json()) == (401, {"message": "Access Denied"})
    hidden = await post_load(client, browser(gitlab, gitlab.sign_in(GARY)), project=2)
    assert (hidden.status, await hidden.json()) == (404, {"message": "404 Project Not Found"})
    assert cube.calls == []


async def test_include_token_with_a_session_mints_with_the_cookie_and_csrf_token(client, gitlab, cube):
    session = gitlab.sign_in(MO)
    resp = await post_load(client, browser(gitlab, session), body={"query": QUERY, "include_token": True})
    assert resp.status == 200, await resp.text()
    claims = jwt.decode(cube.calls[0].headers["Authorization"], CUBE_KEY, algorithms=["HS256"])
    assert claims["gitlabToken"].startswith("glpat-minted-")
    minted = [s for s in gitlab.seen_headers if "X-CSRF-Token" in s and s.get("Cookie")]
    assert len(minted) == 2  # GraphQL's verdict, then the access token's creation
    assert len(gitlab.created_tokens) == 1


async def test_a_dashboard_burst_costs_gitlab_one_call_per_question(client, gitlab, cube):
    session = gitlab.sign_in(ALICE)
    csrf = gitlab.csrf_token(session)
    answers = await asyncio.gather(*(post_load(client, browser(gitlab, session, csrf)) for _ in range(20)))
    assert [a.status for a in answers] == [200] * 20
    assert gitlab.calls["/api/graphql"] == 1
    assert gitlab.calls["/api/v4/user"] == 1
    assert gitlab.calls["/api/v4/projects/{id}"] == 1
    assert gitlab.calls["/api/v4/projects/{id}/members/all/{user_id}"] == 1


# -- the authorizer alone: a signed-out session within the cache TTL, on a clock the test moves ----


async def test_a_signed_out_session_works_until_the_cache_ttl_then_stops(aiohttp_server):
    import aiohttp

    from proxy.auth.gitlab import GitLabClient

    gitlab = FakeGitLab()
    server = await aiohttp_server(gitlab.app())
    now = [1000.0]
    settings = GitLabSettings(url=str(server.make_url("")), cache_ttl=30.0, negative_cache_ttl=5.0)
    async with aiohttp.ClientSession() as http:
        client = GitLabClient(http, settings.url, 5.0, 5, metrics=Metrics())
        authorizer = GitLabAuthorizer(client, settings, timer=lambda: now[0], metrics=Metrics())
        session = gitlab.sign_in(ALICE)
        credential = Credential("session", session, gitlab.csrf_token(session), SESSION_COOKIE)
        assert (await authorizer.authorize(credential, "1", "POST")).project_id == 1
        gitlab.sign_out(session)
        now[0] += 29.0
        assert (await authorizer.authorize(credential, "1", "POST")).caller.user_id == ALICE  # cached, as documented
        now[0] += 1.5
        with pytest.raises(ApiError) as refused:
            await authorizer.authorize(credential, "1", "POST")
        assert refused.value.status == 401


def test_the_session_credential_is_read_as_spec_section_2_1_says():
    headers = {"Cookie": 'a=1; _gitlab_session="abc123"; _gitlab_session=second', "X-CSRF-Token": "tok"}
    credential = extract_credential(headers, {}, SESSION_COOKIE)
    assert (credential.scheme, credential.token, credential.csrf) == ("session", "abc123", "tok")
    assert "abc123" not in repr(credential) and "tok" not in repr(credential)
    assert credential.gitlab_headers() == {"Cookie": "_gitlab_session=abc123"}
    assert credential.gitlab_headers(with_csrf=True) == {"Cookie": "_gitlab_session=abc123", "X-CSRF-Token": "tok"}
    other = extract_credential({**headers, "X-CSRF-Token": "other"}, {}, SESSION_COOKIE)
    assert other.key == credential.key and other.csrf_key != credential.csrf_key
    for refused in ({"Cookie": "_gitlab_session=a b"}, {"Cookie": "x_gitlab_session=abc"}, {"Cookie": "a" * 20000}):
        with pytest.raises(ApiError):
            extract_credential(refused, {}, SESSION_COOKIE)
    with pytest.raises(ApiError):
        extract_credential(headers, {}, None)  # sessions off
    assert extract_credential({**headers, "PRIVATE-TOKEN": "glpat-x"}, {}, SESSION_COOKIE).scheme == "private"
