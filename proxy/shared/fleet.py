"""The shared layer on Redis: GitLab's answers, meta answers and the rate limit, one for the whole fleet.

Rules it keeps:
- optional: with no ``[redis] url`` nothing here runs and every cache stays in its process;
- behind each process's own cache: a warm request is a local hit, no round trip; on a
  local miss, Redis is asked; on a Redis miss one process in the fleet loads (a lock with a
  timeout, ``SET NX PX``) and the others wait for its answer, then load themselves if the
  holder went away; negative answers are shared too, with their own TTL;
- safe to share: keys are hashes (of tokens, cookies, CSRF tokens, Cube keys: never the
  secret itself) under a per-deployment prefix; values carry no secret and are signed
  (HMAC-SHA256 over key and value with ``[redis] signing_key``): a value whose signature
  fails is ignored and logged, so write access to Redis grants nobody a project;
- Redis failing is not an outage: any Redis error or timeout (every call has one) makes
  the caller load for itself, marks the layer degraded (a metric and readiness say so) and
  the next call tries Redis again (redis-py reconnects by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.errors import ApiError
from proxy.singleflight import SharePolicy

log = logging.getLogger(__name__)

#: how often a process waiting for another's load looks for its answer
POLL_SECONDS = 0.02
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
#: a token bucket per key: ARGV rate (tokens/s), burst; returns 0 when a token was taken, else the seconds to wait
_BUCKET = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or t
tokens = math.min(burst, tokens + (t - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', t)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class Codec(Protocol):
    """How one cache's keys and values travel through Redis."""

    def key(self, key: Any) -> str: ...

    def dump(self, value: Any) -> Any: ...

    def load(self, data: Any) -> Any: ...


class Fleet:
    """One Redis connection pool per process, and the shared loads, locks and buckets on it."""

    def __init__(
        self,
        client: aioredis.Redis,
        signing_key: str,
        prefix: str,
        timeout: float,
        lock_ttl: float,
        on_degraded: Callable[[bool], None] = lambda degraded: None,
    ) -> None:
        self._redis = client
        self._key = signing_key.encode()
        self._prefix = prefix
        self._timeout = timeout
        self._lock_ms = max(1, int(lock_ttl * 1000))
        self._on_degraded = on_degraded
        self.degraded = False
        #: values refused for a bad signature (a metric)
        self.tampered = 0
        self._release = client.register_script(_RELEASE)
        self._bucket = client.register_script(_BUCKET)

    # -- signing --------------------------------------------------------------------------------

    def _sign(self, key: str, payload: bytes) -> bytes:
        digest = hmac.new(self._key, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest().encode()
        return digest + b"." + payload

    def _verify(self, key: str, stored: bytes) -> bytes | None:
        digest, dot, payload = stored.partition(b".")
        expected = hmac.new(self._key, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest().encode()
        if dot and hmac.compare_digest(digest, expected):
            return payload
        self.tampered += 1
        log.error(
            "a shared value failed its signature check and is ignored (someone wrote to Redis, or the signing"
            " keys differ across the fleet)",
            extra={"event": "shared_value_refused"},
        )
        return None

    # -- Redis calls, each with its timeout; a failure marks the layer degraded ---------------

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                result = await call
        except (RedisError, OSError, TimeoutError) as exc:
            if not self.degraded:
                log.warning(
                    "Redis failed (%s): serving from local caches until it answers again",
                    type(exc).__name__,
                    extra={"event": "shared_degraded"},
                )
            self._mark(True)
            raise _Down() from None
        if self.degraded:
            log.info("Redis answers again: the shared layer is back", extra={"event": "shared_restored"})
        self._mark(False)
        return result

    def _mark(self, degraded: bool) -> None:
        if degraded != self.degraded:
            self.degraded = degraded
            self._on_degraded(degraded)

    async def ping(self) -> bool:
        try:
            await self._call(self._redis.ping())
        except _Down:
            return False
        return True

    # -- shared loads ---------------------------------------------------------------------------

    async def load(self, key: Any, load: Callable[[], Awaitable[Any]], policy: SharePolicy) -> Any:
        """The fleet's answer for ``key``: from Redis, or loaded once for the fleet (or here, if Redis fails)."""
        codec = policy.codec
        rkey = f"{self._prefix}{policy.namespace}:{codec.key(key)}"
        try:
            found = await self._get(rkey)
            if found is not None:
                return _settle(found, codec)
            token = secrets.token_hex(8)
            if await self._call(self._redis.set(f"{rkey}:lock", token, nx=True, px=self._lock_ms)):
                # another process may have loaded, stored and let go between the miss above and this lock
                found = await self._get(rkey)
                if found is not None:
                    with contextlib.suppress(_Down):
                        await self._call(self._release(keys=[f"{rkey}:lock"], args=[token]))
                    return _settle(found, codec)
                return await self._load_for_fleet(rkey, token, load, policy)
            found = await self._wait_for(rkey)
            if found is not None:
                return _settle(found, codec)
        except _Down:
            pass
        return await load()  # Redis failing, or the holder of the lock gone without an answer

    async def _get(self, rkey: str) -> Any | None:
        stored = await self._call(self._redis.get(rkey))
        if stored is None:
            return None
        payload = self._verify(rkey, stored)
        return None if payload is None else orjson.loads(payload)

    async def _wait_for(self, rkey: str) -> Any | None:
        """Another process loads: its answer, or None once its lock is gone (or expired) without one."""
        deadline = time.monotonic() + self._lock_ms / 1000
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)  # polling Redis for the other process's answer, bounded by the lock
            found = await self._get(rkey)
            if found is not None:
                return found
            if not await self._call(self._redis.exists(f"{rkey}:lock")):
                return await self._get(rkey)
        return None

    async def _load_for_fleet(
        self, rkey: str, token: str, load: Callable[[], Awaitable[Any]], policy: SharePolicy
    ) -> Any:
        try:
            try:
                value = await load()
            except Exception as exc:
                if policy.negative_ttl > 0 and policy.cache_error(exc) and (error := _error_data(exc)) is not None:
                    await self._store(rkey, {"error": error}, policy.negative_ttl)
                raise
            if policy.ttl > 0:
                await self._store(rkey, {"value": policy.codec.dump(value)}, policy.ttl)
            return value
        finally:
            with contextlib.suppress(_Down):
                await self._call(self._release(keys=[f"{rkey}:lock"], args=[token]))

    async def _store(self, rkey: str, data: dict[str, Any], ttl: float) -> None:
        with contextlib.suppress(_Down):
            await self._call(self._redis.set(rkey, self._sign(rkey, orjson.dumps(data)), px=max(1, int(ttl * 1000))))

    # -- the fleet's rate limit -----------------------------------------------------------------

    async def rate(self, caller_key: str, rate: float, burst: int) -> int | None:
        """Seconds to wait (a 429) when the caller's fleet-wide bucket is empty; None when a token was taken.

        Redis failing: None (the process's own bucket, checked first, still holds).
        """
        try:
            wait = await self._call(self._bucket(keys=[f"{self._prefix}rate:{caller_key}"], args=[rate, burst]))
        except _Down:
            return None
        return int(wait) or None

    async def close(self) -> None:
        await self._redis.aclose()


class _Down(Exception):
    """Redis did not answer (error or timeout): the caller goes on without the shared layer."""


def _settle(found: Any, codec: Codec) -> Any:
    if isinstance(found, dict) and "error" in found:
        raise rebuild_error(found["error"])
    return codec.load(found["value"])


def _error_data(exc: BaseException) -> dict[str, Any] | None:
    if isinstance(exc, ApiError):
        return {"status": exc.status, "body": exc.body, "headers": exc.headers or {}}
    return None


def rebuild_error(data: dict[str, Any]) -> ApiError:
    """A shared negative answer as the error it was."""
    return ApiError(int(data["status"]), dict(data["body"]), dict(data.get("headers") or {}))
