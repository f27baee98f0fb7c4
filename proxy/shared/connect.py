"""The shared layer's Redis client, as operators run Redis: a URL, TLS, ACL users, or Sentinel.

- ``url``: ``redis://``, ``rediss://`` (TLS) or ``unix://``; ``username`` and ``password``
  (or ``password_file``) for Redis' ACL, given apart from the URL so the URL holds no secret;
- TLS: ``ca_file`` to verify the server (the system's CAs without it), ``cert_file`` and
  ``key_file`` for a client certificate when Redis asks for one (``tls-auth-clients``);
- Sentinel: ``sentinels`` (``host:port`` each) and ``service_name`` find the primary, and
  the client follows a failover by itself; ``sentinel_username`` / ``sentinel_password``
  (or its file) authenticate to the sentinels; ``tls = true`` speaks TLS to both.

Every call has ``timeout`` for connecting and for answering.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from proxy.observe.metrics import Metrics
from proxy.settings import RedisSettings
from proxy.shared.layer import SharedLayer
from proxy.shared.redis_layer import RedisLayer

#: connections one process keeps to Redis at most
MAX_CONNECTIONS = 64


def _tls(config: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if config.ca_file is not None:
        options["ssl_ca_certs"] = config.ca_file
    if config.cert_file is not None:
        options["ssl_certfile"] = config.cert_file
        options["ssl_keyfile"] = config.key_file
    return options


def _auth(username: str | None, password: str | None) -> dict[str, Any]:
    return {"username": username, "password": password}


class SentinelClient(aioredis.Redis):
    """The primary as Sentinel names it; closing it closes the connections to the sentinels too."""

    sentinel_of: Sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.sentinel_of.sentinels:
            await sentinel.aclose()


def redis_client(config: RedisSettings) -> aioredis.Redis:
    """One client (and connection pool) for this process, as ``config`` says to reach Redis."""
    timeouts = {"socket_timeout": config.timeout, "socket_connect_timeout": config.timeout}
    auth = _auth(config.username, config.password)
    if config.sentinels:
        tls = {"ssl": True, **_tls(config)} if config.tls else {}
        connection: dict[str, Any] = {**timeouts, **tls, **auth}  # the primary's and replicas' connections
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            [_address(entry) for entry in config.sentinels],
            sentinel_kwargs={**timeouts, **tls, **_auth(config.sentinel_username, config.sentinel_password)},
            **connection,
        )
        assert config.service_name is not None  # validated with sentinels
        primary: SentinelClient = sentinel.master_for(
            config.service_name, redis_class=SentinelClient, db=config.db, max_connections=MAX_CONNECTIONS
        )
        primary.sentinel_of = sentinel
        return primary
    assert config.url is not None  # the shared layer is on: a URL or sentinels
    tls = _tls(config) if config.url.startswith("rediss://") else {}
    direct: aioredis.Redis = aioredis.from_url(config.url, max_connections=MAX_CONNECTIONS, **timeouts, **tls, **auth)
    return direct


def _address(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    return host.strip("[]"), int(port)


def open_shared(config: RedisSettings, metrics: Metrics) -> SharedLayer:
    """The fleet's shared layer on the Redis ``config`` names (``[redis] url`` set and validated)."""
    assert config.signing_key is not None  # validated with the url
    return RedisLayer(
        redis_client(config), config.signing_key, config.key_prefix, config.timeout, config.lock_ttl, metrics=metrics
    )
