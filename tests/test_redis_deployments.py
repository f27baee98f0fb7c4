"""Redis as operators run it, on real processes: TLS with client certificates and an ACL user; Sentinel with a
primary, a replica and a failover under traffic. The shared layer works through each, and fails open."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
import trustme

from tests.conftest import QUERY, REPORTER, SIGNING_KEY
from tests.fakes.gitlab import FakeToken
from tests.support.metrics import samples, value
from tests.support.redis_server import RedisServer, Sentinel
from tests.support.wire import LOAD

PASSWORD = "the-proxys-acl-password"
SENTINEL_PASSWORD = "the-sentinels-password"
SERVICE = "analytics"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """A throwaway CA, Redis' certificate for 127.0.0.1, and a client certificate for the proxy."""
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem", "server_cert": tmp_path / "server.pem", "server_key": tmp_path / "server.key"}
    files |= {"client_cert": tmp_path / "client.pem", "client_key": tmp_path / "client.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(files["server_key"]))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(files["server_cert"]), append=i > 0)
    client = ca.issue_cert("product-analytics-proxy")
    client.private_key_pem.write_to_path(str(files["client_key"]))
    for i, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(files["client_cert"]), append=i > 0)
    password = tmp_path / "redis-password"
    password.write_text(PASSWORD + "\n")
    return {name: str(path) for name, path in files.items()} | {"password": str(password)}


@pytest.fixture
def tls_acl_redis(tmp_path, tls_files):
    server = RedisServer(
        tmp_path / "redis",
        [
            "tls-port",
            f"tls-cert-file {tls_files['server_cert']}",
            f"tls-key-file {tls_files['server_key']}",
            f"tls-ca-cert-file {tls_files['ca']}",
            "tls-auth-clients yes",
            "user default off",
            f"user proxy on >{PASSWORD} ~product-analytics-proxy:* +@all -@dangerous",
        ],
        {
            "username": "proxy",
            "password": PASSWORD,
            "ssl_ca_certs": tls_files["ca"],
            "ssl_certfile": tls_files["client_cert"],
            "ssl_keyfile": tls_files["client_key"],
        },
    )
    server.start()
    yield server
    server.stop()


async def shared(proxy) -> tuple[float, float]:
    found = samples(await (await proxy.get("/-/metrics")).text())
    return value(found, "pa_proxy_shared_degraded"), value(found, "pa_proxy_shared_refused_values_total")


async def test_tls_with_a_client_certificate_and_an_acl_user(
    make_client, make_settings, tls_files, tls_acl_redis, gitlab
):
    settings = make_settings(
        redis={
            "url": tls_acl_redis.url,
            "username": "proxy",
            "password_file": tls_files["password"],
            "ca_file": tls_files["ca"],
            "cert_file": tls_files["client_cert"],
            "key_file": tls_files["client_key"],
            "signing_key": SIGNING_KEY,
            "timeout": 2.0,
            "local_ttl": 60.0,
        }
    )
    assert tls_acl_redis.url.startswith("rediss://")
    first, second = await make_client(settings), await make_client(settings)
    assert (await first.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    asked = sum(gitlab.calls.values())
    assert (await second.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    assert sum(gitlab.calls.values()) == asked  # the second took GitLab's answers from Redis, over TLS
    assert await shared(second) == (0, 0)
    with tls_acl_redis.connect() as conn:  # stored under the ACL user's key pattern
        assert list(conn.scan_iter(match="product-analytics-proxy:callers:*"))


@pytest.mark.parametrize("wrong", ["password", "client_certificate"])
async def test_a_refused_tls_or_acl_connection_fails_open(
    make_client, make_settings, tls_files, tls_acl_redis, gitlab, wrong
):
    redis_section = {
        "url": tls_acl_redis.url,
        "username": "proxy",
        "password": "not-the-password" if wrong == "password" else PASSWORD,
        "ca_file": tls_files["ca"],
        "signing_key": SIGNING_KEY,
        "timeout": 2.0,
    }
    if wrong == "password":
        redis_section |= {"cert_file": tls_files["client_cert"], "key_file": tls_files["client_key"]}
    proxy = await make_client(make_settings(redis=redis_section))
    for _ in range(2):
        assert (await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    degraded, _ = await shared(proxy)
    assert degraded == 1
    ready = await proxy.get("/-/readiness")
    assert ready.status == 200 and (await ready.json())["shared"] == "degraded"


# -- Sentinel --------------------------------------------------------------------------------------


@pytest.fixture
def sentinel_set(tmp_path):
    """A primary and its replica (both with a password), and one sentinel with a password of its own."""
    auth = [f"requirepass {PASSWORD}", f"masterauth {PASSWORD}"]
    primary = RedisServer(tmp_path / "primary", auth, {"password": PASSWORD})
    primary.start()
    replica = RedisServer(tmp_path / "replica", [*auth, f"replicaof 127.0.0.1 {primary.port}"], {"password": PASSWORD})
    replica.start()
    sentinel = Sentinel(tmp_path / "sentinel", SERVICE, primary, SENTINEL_PASSWORD, PASSWORD)
    sentinel.start()
    yield primary, replica, sentinel
    for server in (sentinel, replica, primary):
        server.stop()


def wait_for(check, what: str, timeout: float = 30.0):
    """Poll a condition of the Redis set (a readiness probe's loop, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)  # polling interval, bounded by the deadline
    raise AssertionError(f"{what}: not within {timeout:g} s")


def primary_port(sentinel: Sentinel) -> int:
    with sentinel.connect() as conn:
        return int(conn.sentinel_get_master_addr_by_name(SERVICE)[1])


def fail_over(sentinel: Sentinel, replica: RedisServer, primary: RedisServer) -> None:
    """Ask the sentinel for a failover once it knows a healthy replica, and wait until the replica is primary and
    the sentinel has made the old primary its replica (until then the old one, still up, takes writes too)."""

    def replica_known() -> bool:
        with sentinel.connect() as conn:
            return any(
                r["port"] == replica.port and "disconnected" not in r["flags"] and r["master-link-status"] == "ok"
                for r in conn.sentinel_slaves(SERVICE)
            )

    def failed_over() -> bool:
        try:
            with sentinel.connect() as conn:
                conn.execute_command("SENTINEL FAILOVER", SERVICE)
            return True
        except redis.ResponseError:  # NOGOODSLAVE while it still judges the replica: ask again
            return False

    wait_for(replica_known, "the sentinel knows the replica")
    wait_for(failed_over, "the sentinel accepts a failover")
    wait_for(lambda: primary_port(sentinel) == replica.port, "the sentinel names the replica as primary")
    with replica.connect() as conn:
        wait_for(lambda: conn.info("replication")["role"] == "master", "the replica is primary")
    with primary.connect() as conn:
        # the sentinel tells it at its next look (its INFO every 10 s outside a failover)
        wait_for(lambda: conn.info("replication")["role"] == "slave", "the old primary made a replica", 60)


async def test_sentinel_failover_under_traffic_loses_no_request(make_client, make_settings, sentinel_set, gitlab):
    primary, replica, sentinel = sentinel_set
    settings = make_settings(
        redis={
            "sentinels": [f"127.0.0.1:{sentinel.port}"],
            "service_name": SERVICE,
            "password": PASSWORD,
            "sentinel_password": SENTINEL_PASSWORD,
            "signing_key": SIGNING_KEY,
            "timeout": 1.0,
            "local_ttl": 0.001,
        }
    )
    tokens = [f"glpat-failover-{i:09d}" for i in range(40)]
    for token in tokens:
        gitlab.tokens[token] = FakeToken(1, ["api"])
    proxy = await make_client(settings)
    assert (await proxy.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    with primary.connect() as conn:
        assert list(conn.scan_iter(match="product-analytics-proxy:callers:*"))  # the shared layer writes to the primary

    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        i = 0
        while not stop.is_set():
            headers = {"PRIVATE-TOKEN": tokens[i % 20]}  # the first twenty: callers asked again and again
            statuses.append((await proxy.post(LOAD, json={"query": QUERY}, headers=headers)).status)
            i += 1

    running = asyncio.ensure_future(traffic())
    try:
        await asyncio.to_thread(fail_over, sentinel, replica, primary)
        with replica.connect() as conn:
            replicated = conn.dbsize()  # what it holds from the old primary
        # the shared layer follows the new primary: the new callers' answers are written there
        for token in tokens[20:]:
            assert (await proxy.post(LOAD, json={"query": QUERY}, headers={"PRIVATE-TOKEN": token})).status == 200
        with replica.connect() as conn:
            written_after = conn.dbsize()
    finally:
        stop.set()
        await running
    assert len(statuses) > 20 and set(statuses) == {200}
    assert written_after >= replicated + 20, (replicated, written_after)  # a key at least per new caller
    degraded, refused = await shared(proxy)
    assert (degraded, refused) == (0, 0)
