"""A grant remembered from cached GitLab answers lives no longer than the first of them."""

import aiohttp
import pytest

from proxy.auth.authorizer import GitLabAuthorizer
from proxy.auth.credentials import Credential
from proxy.auth.gitlab import GitLabClient
from proxy.errors import ApiError
from proxy.observe.metrics import Metrics
from proxy.settings import settings_from_mapping
from tests.fakes.gitlab import FakeToken

TOKEN = "glpat-reporter-0000000001"


@pytest.fixture
async def authorizer(gitlab, gitlab_url):
    clock = [1000.0]
    settings = settings_from_mapping({"gitlab": {"url": gitlab_url, "cache_ttl": 30.0, "cache_size": 2}}, {}).gitlab
    async with aiohttp.ClientSession() as session:
        client = GitLabClient(session, gitlab_url, 5.0, 30, metrics=Metrics())
        yield GitLabAuthorizer(client, settings, timer=lambda: clock[0], metrics=Metrics()), clock


async def test_a_warm_grant_asks_gitlab_nothing(gitlab, authorizer):
    auth, _ = authorizer
    alice = Credential("private", TOKEN)
    first = await auth.authorize(alice, "1", "POST")
    calls = sum(gitlab.calls.values())
    again = await auth.authorize(alice, "1", "POST")
    assert sum(gitlab.calls.values()) == calls
    assert again == first


async def test_a_revoked_token_stops_within_the_ttl_of_its_oldest_answer(gitlab, authorizer):
    auth, clock = authorizer
    alice = Credential("private", TOKEN)
    await auth.authorize(alice, "1", "POST")  # t=1000: who alice is, cached until 1030
    clock[0] = 1020.0
    await auth.authorize(alice, "2", "POST")  # t=1020: project 2 and the membership, until 1050
    gitlab.tokens[TOKEN] = FakeToken(1, ["api"], revoked=True, active=False)
    clock[0] = 1029.0
    assert (await auth.authorize(alice, "2", "POST")).project_id == 2  # still within every answer's TTL
    clock[0] = 1031.0  # who alice is has expired, though project 2's answers have not
    with pytest.raises(ApiError) as refused:
        await auth.authorize(alice, "2", "POST")
    assert refused.value.status == 401


async def test_a_grant_is_remembered_per_scope_and_the_memory_is_bounded(gitlab, authorizer):
    auth, _ = authorizer
    read_only = Credential("private", "glpat-readapi-0000000001")
    assert (await auth.authorize(read_only, "1", "GET")).project_id == 1
    with pytest.raises(ApiError) as refused:
        await auth.authorize(read_only, "1", "POST")  # a GET grant is not a POST grant
    assert refused.value.status == 403
    alice = Credential("private", TOKEN)
    for ref in ("1", "2", "group/alpha"):
        await auth.authorize(alice, ref, "POST")
    assert len(auth._grants) <= 2  # cache_size
