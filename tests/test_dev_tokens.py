"""The dev_tokens auth backend for a local stack without GitLab."""

import pytest

from proxy.auth.dev_tokens import load_dev_tokens, parse_dev_tokens
from proxy.settings import SettingsError
from tests.conftest import QUERY

LOAD = "/api/v4/projects/{}/product_analytics/request/load"


@pytest.fixture
async def dev_client(make_settings, make_client):
    return await make_client(make_settings(auth={"backend": "dev_tokens", "dev_tokens_file": "config/dev-tokens.toml"}))


def tok(token):
    return {"PRIVATE-TOKEN": token}


async def test_roles_scopes_and_paths_follow_the_gitlab_rules(dev_client, cube, gitlab):
    ok = await dev_client.post(LOAD.format(1), json={"query": QUERY}, headers=tok("dev-reporter-shop-token-0002"))
    assert ok.status == 200
    by_path = await dev_client.post(
        LOAD.format("demo%2Fblog"), json={"query": QUERY}, headers=tok("dev-maintainer-token-0001")
    )
    assert by_path.status == 200
    assert [c.claims["appId"] for c in cube.calls] == ["gitlab_project_1", "gitlab_project_2"]
    other = await dev_client.post(LOAD.format(2), json={"query": QUERY}, headers=tok("dev-reporter-shop-token-0002"))
    assert other.status == 404
    guest = await dev_client.post(LOAD.format(1), json={"query": QUERY}, headers=tok("dev-guest-shop-token-00004"))
    assert (guest.status, await guest.json()) == (401, {"message": "Access Denied"})
    unknown = await dev_client.post(LOAD.format(1), json={"query": QUERY}, headers=tok("dev-reporter-shop-token-0003"))
    assert unknown.status == 401
    read_api = await dev_client.post(LOAD.format(1), json={"query": QUERY}, headers=tok("dev-readapi-token-000005"))
    assert read_api.status == 403
    meta = await dev_client.get("/projects/1/product_analytics/request/meta", headers=tok("dev-readapi-token-000005"))
    assert meta.status == 200
    assert sum(gitlab.calls.values()) == 0  # GitLab is never asked


async def test_include_token_gets_a_stand_in(dev_client, cube):
    resp = await dev_client.post(
        LOAD.format(1), json={"query": QUERY, "include_token": True}, headers=tok("dev-maintainer-token-0001")
    )
    assert resp.status == 200
    assert cube.calls[0].claims["gitlabToken"].startswith("dev-minted-")


def test_the_shipped_file_is_valid():
    tokens = load_dev_tokens("config/dev-tokens.toml")
    assert tokens.paths == {"demo/web-shop": 1, "demo/blog": 2}
    assert len(tokens.tokens) == 5


def test_bad_files_list_every_problem(tmp_path):
    with pytest.raises(SettingsError) as info:
        parse_dev_tokens(
            {
                "projects": {"x": {"path": "a/b"}, "3": {}},
                "tokens": {
                    "short": {"user_id": 1},
                    "long-enough-token-1": {"user_id": "one"},
                    "long-enough-token-2": {"user_id": 2, "roles": {"1": "emperor", "abc": "owner"}},
                },
            },
            "dev.toml",
        )
    assert len(info.value.problems) == 6
    with pytest.raises(SettingsError, match="cannot be read"):
        load_dev_tokens(str(tmp_path / "none.toml"))


async def test_a_session_cookie_is_no_dev_token(dev_client, cube, gitlab):
    # a cookie whose value is a dev token is still a session, and the dev backend has no GitLab to ask about one
    headers = {"Cookie": "_gitlab_session=dev-maintainer-token-0001", "X-CSRF-Token": "anything"}
    resp = await dev_client.post(LOAD.format(1), json={"query": QUERY}, headers=headers)
    assert resp.status == 401
    assert cube.calls == []
