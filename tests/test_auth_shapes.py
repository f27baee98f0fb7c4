"""GitLab answers of unexpected shapes: the authorizer fails closed with the spec's status, never lets a caller in.

GitLab is the peer faked here, by a small aiohttp server that answers each endpoint as a
test sets it (aioresponses 0.7.9 cannot build aiohttp 3.14's responses): each case is
one odd but possible answer.
"""

import datetime as dt
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.auth.authorizer import GitLabAuthorizer
from proxy.auth.credentials import Credential
from proxy.auth.gitlab import GitLabClient
from proxy.errors import ApiError
from proxy.observe.metrics import Metrics
from proxy.settings import settings_from_mapping

ALICE = Credential("private", "glpat-alice-000000000001")
USER = {"id": 1, "username": "alice", "state": "active"}
PAT = {"scopes": ["api"], "active": True, "revoked": False, "expires_at": None}
PROJECT = {"id": 7, "namespace": {"kind": "group"}}
MEMBER = {"access_level": 20, "state": "active"}


ORDINARY: dict[str, tuple[int, Any]] = {
    "GET /api/v4/user": (200, USER),
    "GET /api/v4/personal_access_tokens/self": (200, PAT),
    "GET /oauth/token/info": (401, {"error": "invalid_token"}),
    "GET /api/v4/projects/7": (200, PROJECT),
    "GET /api/v4/projects/7/members/all/1": (200, MEMBER),
}
NAMES = {
    "user": "GET /api/v4/user",
    "pat": "GET /api/v4/personal_access_tokens/self",
    "oauth": "GET /oauth/token/info",
    "project": "GET /api/v4/projects/7",
    "member": "GET /api/v4/projects/7/members/all/1",
    "mint": "POST /api/v4/projects/7/access_tokens",
}


@pytest.fixture
async def gitlab_answers(aiohttp_server):
    """What each GitLab endpoint answers; a test changes entries (by short name) before it asks."""
    answers = dict(ORDINARY)

    async def endpoint(request: web.Request) -> web.Response:
        status, body = answers.get(f"{request.method} {request.path}", (404, {"message": "404 Not Found"}))
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", endpoint)
    server = await aiohttp_server(app)
    return answers, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def auth(gitlab_answers):
    _, url = gitlab_answers
    settings = settings_from_mapping({"gitlab": {"url": url, "cache_ttl": 0.0, "negative_cache_ttl": 0.0}}, {})
    async with aiohttp.ClientSession() as session:
        yield GitLabAuthorizer(
            GitLabClient(session, url, 5.0, 30, metrics=Metrics()), settings.gitlab, metrics=Metrics()
        )


@pytest.fixture
def answer(gitlab_answers):
    answers, _ = gitlab_answers

    def set_answers(**changes: tuple[int, Any]) -> None:
        for name, reply in changes.items():
            answers[NAMES[name]] = reply

    return set_answers


async def outcome(auth: GitLabAuthorizer, method: str = "POST") -> int:
    try:
        grant = await auth.authorize(ALICE, "7", method)
    except ApiError as exc:
        return exc.status
    assert grant.project_id == 7
    return 200


async def test_the_ordinary_answers_let_alice_in(auth):
    assert await outcome(auth) == 200


@pytest.mark.parametrize(
    ("answers", "status"),
    [
        ({"user": (200, {**USER, "state": "blocked"})}, 401),
        ({"user": (200, {**USER, "id": "1"})}, 401),  # no integer id: not a user GitLab described
        ({"user": (200, ["alice"])}, 401),
        ({"pat": (200, {**PAT, "expires_at": "2020-01-01"})}, 401),
        ({"pat": (200, {**PAT, "expires_at": "not a date"})}, 401),
        ({"pat": (200, {**PAT, "scopes": "api"})}, 403),  # scopes not a list: none
        ({"pat": (400, {"message": "400 Bad request"}), "oauth": (401, {"error": "invalid_token"})}, 401),
        ({"pat": (400, {}), "oauth": (200, {"scope": 42})}, 403),
        ({"pat": (302, {})}, 503),  # a redirect: the GitLab URL is wrong, fail closed
        ({"project": (401, {"message": "401 Unauthorized"})}, 401),
        ({"project": (200, {"id": "7"})}, 404),
        ({"project": (200, {**PROJECT, "namespace": {"kind": "user"}})}, 404),
        ({"member": (401, {"message": "401 Unauthorized"})}, 401),
        ({"member": (200, {"access_level": "20"})}, 401),
        ({"member": (200, {**MEMBER, "state": "awaiting"})}, 401),
    ],
    ids=[
        "blocked-user",
        "user-id-not-int",
        "user-not-object",
        "token-expired",
        "token-expiry-garbled",
        "scopes-not-a-list",
        "oauth-also-refused",
        "oauth-scope-garbled",
        "token-info-redirect",
        "project-401",
        "project-id-not-int",
        "personal-project",
        "member-401",
        "level-not-int",
        "membership-awaiting",
    ],
)
async def test_an_odd_answer_fails_closed(auth, answer, answers, status):
    answer(**answers)
    assert await outcome(auth) == status


@pytest.mark.parametrize(
    "oauth_body",
    [{"scope": "api read_user"}, {"scope": ["api"]}, {"scopes": ["api", "openid"]}],
    ids=["space-separated", "list", "scopes-key"],
)
async def test_an_oauth_token_scope_in_any_of_its_forms_is_read(auth, answer, oauth_body):
    answer(pat=(401, {"message": "401 Unauthorized"}), oauth=(200, oauth_body))
    assert await outcome(auth) == 200


async def test_a_token_that_expires_today_still_works_today(auth, answer):
    answer(pat=(200, {**PAT, "expires_at": dt.date.today().isoformat()}))
    assert await outcome(auth) == 200


async def test_a_minted_token_is_taken_from_gitlabs_answer(auth, answer):
    answer(mint=(201, {"id": 5, "token": "glpat-minted-0000000001"}))
    grant = await auth.authorize(ALICE, "7", "POST")
    assert await auth.mint_token(ALICE, grant) == "glpat-minted-0000000001"


@pytest.mark.parametrize(
    ("status", "body", "wanted"),
    [
        (201, {"id": 5}, {"message": "GitLab created no project access token"}),  # nothing to sign with: 502
        (400, {"message": "User does not have permission to create project access token"}, None),
        (403, {"error": "insufficient_scope"}, None),
    ],
)
async def test_minting_answers_gitlabs_refusal_or_fails_closed(auth, answer, status, body, wanted):
    answer(mint=(status, body))
    grant = await auth.authorize(ALICE, "7", "POST")
    with pytest.raises(ApiError) as refused:
        await auth.mint_token(ALICE, grant)
    if wanted is not None:
        assert (refused.value.status, refused.value.body) == (502, wanted)
    else:  # GitLab's own status and text, not GitLab's silent carrying on with no token
        assert refused.value.status == status
        assert refused.value.body == {"message": next(iter(body.values()))}
