"""What a Redis writer cannot do, and a fleet that does not refuse its own users (real redis-server).

Each "cannot" of the README's list is a test here: grant a project by changing a value,
by moving one to another key, or by putting back an expired one (a revoked token stays
revoked); hold a process longer than a failed Redis call with a lock; make a rate bucket
refuse for ever. And the fleet's own promises: a caller known to the fleet is not new, the
status page looks callers up through the same budget, a lock is let go on every path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.caching.singleflight import SharePolicy
from proxy.errors import ApiError
from proxy.observe.metrics import Metrics
from proxy.shared.codecs import JsonCodec
from proxy.shared.envelope import Envelope
from proxy.shared.redis_layer import _BOUNDED_GET, RedisLayer
from tests.conftest import QUERY, REPORTER, SIGNING_KEY, replace
from tests.fakes.gitlab import FakeToken
from tests.support.metrics import samples, value
from tests.support.sessions import ALICE, browser, post_load
from tests.support.wire import LOAD

PREFIX = "product-analytics-proxy:"
GUEST = {"PRIVATE-TOKEN": "glpat-guest-000000000002"}
ADMIN = {"PRIVATE-TOKEN": "glpat-admin-000000000003"}


def caller_key(headers: dict[str, str]) -> str:
    return f"{PREFIX}callers:private:{hashlib.sha256(headers['PRIVATE-TOKEN'].encode()).hexdigest()}"


@pytest.fixture
async def writer(redis_server):
    """Someone with write access to Redis (and none to the signing key)."""
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def values(writer) -> dict[bytes, bytes]:
    keys = [k async for k in writer.scan_iter(match=f"{PREFIX}*") if not k.endswith(b":lock")]
    return {k: await writer.get(k) for k in keys if await writer.type(k) == b"string"}


async def refused_values(proxy) -> float:
    return value(samples(await (await proxy.get("/-/metrics")).text()), "pa_proxy_shared_refused_values_total")


async def test_a_revoked_token_stays_revoked_when_its_old_signed_answers_are_put_back(
    make_client, shared_settings, gitlab, cube, writer
):
    first = await make_client(shared_settings)
    assert (await first.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    granted = await values(writer)  # the caller, the project, the membership: validly signed
    assert len(granted) == 3
    token = gitlab.tokens[REPORTER["PRIVATE-TOKEN"]]
    token.revoked, token.active = True, False
    # the writer recorded those answers while they were good and puts them back once they expired,
    # without a TTL: sealed by the fleet's own key, an hour ago, so every signature is right
    an_hour_ago = Envelope(SIGNING_KEY.encode(), clock=lambda: time.time() - 3600)
    for key, stored in granted.items():
        payload = stored.split(b".", 3)[3]
        await writer.set(key, an_hour_ago.seal(key.decode(), payload, 60))
        assert await writer.ttl(key) == -1  # Redis keeps it for ever
    second = await make_client(shared_settings)
    refused = await second.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert refused.status == 401
    assert await refused_values(second) >= 1
    assert len(cube.calls) == 1  # only the first, granted, load reached Cube


async def test_a_value_moved_to_another_key_is_refused(make_client, shared_settings, gitlab, cube, writer):
    first = await make_client(shared_settings)
    assert (await first.post(LOAD, json={"query": QUERY}, headers=ADMIN)).status == 200
    assert (await first.post(LOAD, json={"query": QUERY}, headers=GUEST)).status == 401
    # the administrator's record, validly signed, copied onto the guest's key: the guest would be an admin
    await writer.set(caller_key(GUEST), await writer.get(caller_key(ADMIN)))
    second = await make_client(shared_settings)
    refused = await second.post(LOAD, json={"query": QUERY}, headers=GUEST)
    assert (refused.status, await refused.json()) == (401, {"message": "Access Denied"})
    assert await refused_values(second) >= 1
    assert len(cube.calls) == 1


async def test_callers_known_to_the_fleet_are_not_new(make_client, shared_settings, gitlab, cube):
    """25 callers keep asking past ``local_ttl`` with a budget of 25 new credentials: only 200s, no new GitLab call."""
    tokens = [f"glpat-fleet-{i:012d}" for i in range(25)]
    for token in tokens:
        gitlab.tokens[token] = FakeToken(1, ["api"])
    fleet = replace(
        replace(shared_settings, "redis", local_ttl=0.001),
        "gitlab",
        new_credentials_burst=25,
        new_credentials_per_second=0.0001,
    )
    first, second = await make_client(fleet), await make_client(fleet)
    for proxy in (first, second, first, second, first):
        statuses = [
            (await proxy.post(LOAD, json={"query": QUERY}, headers={"PRIVATE-TOKEN": t})).status for t in tokens
        ]
        assert statuses == [200] * 25
    assert gitlab.calls["/api/v4/user"] == 25  # each caller asked of GitLab once, by the whole fleet


@pytest.mark.handed_over  # the status page is aiohttp's
async def test_random_tokens_on_the_status_page_cost_gitlab_at_most_the_budget(make_client, settings, gitlab):
    # a metrics port: the public listener's status page is then for GitLab administrators only
    budget = replace(
        replace(settings, "server", metrics_port=1),
        "gitlab",
        new_credentials_burst=1,
        new_credentials_per_second=0.0001,
    )
    proxy = await make_client(budget)
    statuses = []
    for i in range(10):
        resp = await proxy.get(
            "/-/status", headers={"PRIVATE-TOKEN": f"glpat-random-{i:012d}", "Accept": "application/json"}
        )
        statuses.append(resp.status)
    assert statuses == [404] * 10
    assert gitlab.calls["/api/v4/user"] <= 1


@pytest.mark.handed_over  # the status page is aiohttp's
async def test_the_status_page_keeps_the_callers_rate_limit(make_client, settings, gitlab):
    limited = replace(replace(settings, "server", metrics_port=1), "limits", rate_limit=0.001, rate_limit_burst=2)
    proxy = await make_client(limited)
    headers = {**ADMIN, "Accept": "application/json"}
    statuses = [(await proxy.get("/-/status", headers=headers)).status for _ in range(4)]
    assert statuses == [200, 200, 404, 404]  # refused past the burst: the page tells nothing, not even 429


async def test_a_good_session_post_does_not_vouch_for_a_wrong_csrf_token(client, gitlab, cube):
    session = gitlab.sign_in(ALICE)
    assert (await post_load(client, browser(gitlab, session))).status == 200
    wrong = await post_load(client, browser(gitlab, session, csrf="not-the-sessions-csrf-token"))
    assert wrong.status == 401
    other = gitlab.sign_in(ALICE)  # the same user's other session: its token is valid, but not for this one
    again = await post_load(client, browser(gitlab, session, csrf=gitlab.csrf_token(other)))
    assert again.status == 401
    assert len(cube.calls) == 1


# -- the fleet's lock and buckets, on the shared layer itself -----------------------------------------


class _FailingSecondGet(aioredis.Redis):
    """A Redis whose second read of a value fails (a connection dropped right after the lock was taken)."""

    gets = 0

    async def evalsha(self, sha, numkeys, *keys_and_args):  # type: ignore[override]
        if sha != hashlib.sha1(_BOUNDED_GET.encode()).hexdigest():  # noqa: S324 - Redis names scripts by SHA-1
            return await super().evalsha(sha, numkeys, *keys_and_args)
        if self.gets == 1:
            self.gets += 1
            raise RedisConnectionError("connection dropped")
        found = await super().evalsha(sha, numkeys, *keys_and_args)  # (a first try may find the script unloaded)
        self.gets += 1
        return found


POLICY = SharePolicy("test", JsonCodec(), 30.0, 5.0, lambda exc: isinstance(exc, ApiError))


def fleet_on(client: aioredis.Redis, timeout: float = 0.25, lock_ttl: float = 30.0) -> RedisLayer:
    return RedisLayer(client, SIGNING_KEY, PREFIX, timeout, lock_ttl, metrics=Metrics())


async def test_the_lock_is_let_go_when_the_read_after_taking_it_fails(redis_server, writer):
    client = _FailingSecondGet.from_url(redis_server.url)
    fleet = fleet_on(client)

    async def load() -> int:
        assert await writer.exists(f"{PREFIX}test:k:lock") == 1  # loading under the fleet's lock
        return 7

    try:
        assert await fleet.load("k", load, POLICY) == 7
        assert client.gets == 2
        assert await writer.exists(f"{PREFIX}test:k:lock") == 0
    finally:
        await fleet.close()


async def test_the_lock_is_let_go_when_the_load_is_cancelled(redis_server, writer):
    fleet = fleet_on(aioredis.from_url(redis_server.url))
    started = asyncio.Event()

    async def never() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    try:
        task = asyncio.ensure_future(fleet.load("k", never, POLICY))
        await started.wait()
        assert await writer.exists(f"{PREFIX}test:k:lock") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await writer.exists(f"{PREFIX}test:k:lock") == 0
    finally:
        await fleet.close()


@pytest.mark.serial  # "no wait" is a fixed bound (0.25 s)
@pytest.mark.parametrize(
    "lock_value",
    [
        b"anything",  # not a lock of ours
        b"v1.1.00.x",  # our form, a wrong signature
        "expired",  # ours, validly signed, long past its expiry (replayed)
    ],
)
async def test_a_lock_someone_wrote_costs_no_wait(redis_server, writer, lock_value):
    fleet = fleet_on(aioredis.from_url(redis_server.url), lock_ttl=60.0)
    lock = f"{PREFIX}test:k:lock"
    if lock_value == "expired":
        lock_value = Envelope(SIGNING_KEY.encode(), clock=lambda: time.time() - 3600).seal(lock, b"holder", 60)
    await writer.set(lock, lock_value)  # no expiry
    loads = []

    async def load() -> int:
        loads.append(1)
        return 3

    try:
        started = time.monotonic()
        assert await fleet.load("k", load, POLICY) == 3
        assert time.monotonic() - started < 0.25  # not the lock's 60 s, nor even one Redis timeout
        assert loads == [1] and fleet.tampered == 1
    finally:
        await fleet.close()


async def test_a_live_lock_holds_a_waiter_no_longer_than_a_redis_timeout(redis_server, writer):
    holder, waiter = (fleet_on(aioredis.from_url(redis_server.url), timeout=0.3, lock_ttl=60.0) for _ in range(2))
    started = asyncio.Event()

    async def hung() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    async def load() -> int:
        return 5

    held = asyncio.ensure_future(holder.load("k", hung, POLICY))
    try:
        await started.wait()
        began = time.monotonic()
        assert await waiter.load("k", load, POLICY) == 5
        waited = time.monotonic() - began
        assert 0.3 <= waited < 3.0  # the Redis timeout, then it loads itself: never the lock's 60 s
    finally:
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        await holder.close()
        await waiter.close()


@pytest.mark.parametrize(
    ("tokens", "at"),
    [
        ("-1e15", "now"),  # every call refused, with a Retry-After of 2e13 s
        ("-inf", "now"),  # a negative Retry-After
        ("nan", "now"),
        ("inf", "now"),
        ("1", "1e12"),  # a bucket "from the future" never refills
        ("0", "an hour ahead"),  # an empty one from the future: without the reset it would refuse for an hour
        ("1", "garbage"),
    ],
)
async def test_a_bucket_someone_wrote_is_reset(redis_server, writer, tokens, at):
    fleet = fleet_on(aioredis.from_url(redis_server.url))
    key = f"{PREFIX}rate:caller"
    stamps = {"now": str(time.time()), "an hour ahead": str(time.time() + 3600)}
    await writer.hset(key, mapping={"tokens": tokens, "at": stamps.get(at, at)})
    try:
        assert await fleet.rate("caller", 0.5, 3) is None  # reset to a full bucket: a token taken
        assert await writer.ttl(key) > 0  # and it expires again
    finally:
        await fleet.close()


async def test_an_empty_bucket_stamped_a_hair_ahead_stays_empty(redis_server, writer):
    """Calls microseconds apart: the last one's stamp, as stored (rounded), may be past Redis' clock at the next
    call. That is the same bucket, not one "from the future" to reset (a reset let a burst through the fleet)."""
    fleet = fleet_on(aioredis.from_url(redis_server.url))
    seconds, micros = await writer.time()
    key = f"{PREFIX}rate:caller"
    await writer.hset(key, mapping={"tokens": "0", "at": f"{seconds + micros / 1e6 + 0.5:.6f}"})
    try:
        assert isinstance(await fleet.rate("caller", 0.1, 5), int)  # still empty: a 429
    finally:
        await fleet.close()


async def test_retry_after_is_at_most_the_time_one_token_takes(redis_server):
    fleet = fleet_on(aioredis.from_url(redis_server.url))
    try:
        waits = [await fleet.rate("caller", 0.25, 2) for _ in range(5)]
        assert waits[:2] == [None, None]
        assert all(isinstance(w, int) and 1 <= w <= math.ceil(1 / 0.25) for w in waits[2:])
    finally:
        await fleet.close()


# -- GitLab's answers by what they were --------------------------------------------------------------


@pytest.mark.parametrize("answer", [502, 429, "unreachable"])
async def test_gitlab_5xx_and_429_are_recorded_as_such(make_client, settings, gitlab, answer, caplog):
    if answer == "unreachable":
        settings = replace(settings, "gitlab", url="http://127.0.0.1:1")
    else:
        gitlab.fail_with = answer
    proxy = await make_client(settings)
    caplog.set_level(logging.WARNING, logger="proxy.auth.gitlab")
    resp = await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 503 and resp.headers["Retry-After"]
    found = samples(await (await proxy.get("/-/metrics")).text())
    assert value(found, "pa_proxy_gitlab_calls_total", endpoint="user", code=str(answer)) == 1
    events = {(getattr(r, "event", None), getattr(r, "status", None)) for r in caplog.records}
    if answer == "unreachable":
        assert ("gitlab_unreachable", None) in events
    else:
        assert ("gitlab_error", answer) in events
