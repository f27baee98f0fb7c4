"""The shared layer on Redis: GitLab's answers, meta answers and the rate limit, one for the whole fleet.

Rules it keeps:
- optional: with no ``[redis]`` server nothing here runs and every cache stays in its process;
- behind each process's own cache: a warm request is a local hit, no round trip; on a
  local miss, Redis is asked; on a Redis miss one process in the fleet loads (a signed lock
  with a timeout, ``SET NX PX``) and the others wait for its answer, then load themselves if
  the holder went away; negative answers are shared too, with their own TTL;
- safe to share: keys are hashes (of tokens, cookies, CSRF tokens, Cube keys: never the
  secret itself) under a per-deployment prefix; values carry no secret and travel in a
  signed envelope (``proxy/shared/envelope.py``: HMAC-SHA256 over the format version, the
  key, an absolute expiry and the value), so a value someone wrote, moved to another key,
  or put back after it expired is ignored and counted: write access to Redis grants nobody
  a project and revives no credential;
- Redis' state bounds no wait of ours beyond what a failed call costs: a lock whose value
  is not a live signed lock of ours is ignored (the process loads for itself), a lock is let
  go on every path (answer, error, cancellation), and a waiter stops as soon as it is gone;
  a rate bucket found out of range is reset, and ``Retry-After`` stays a small positive number;
- Redis failing is not an outage: any Redis error or timeout (every call has one) makes
  the caller load for itself, marks the layer degraded (a metric and readiness say so) and
  the next call tries Redis again (redis-py reconnects by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError

from proxy.caching.singleflight import SharePolicy
from proxy.errors import ApiError
from proxy.observe.metrics import Metrics
from proxy.shared.envelope import Envelope

log = logging.getLogger(__name__)

#: how often a process waiting for another's load looks for its answer
POLL_SECONDS = 0.02
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
#: a value, read only when it is at most ARGV[1] bytes long; else its length (refused unread: nobody of ours wrote
#: it); with KEYS[2], that key's value too (a lock: at most ARGV[2] bytes, else false), in one round trip
_BOUNDED_GET = """
local n = redis.call('STRLEN', KEYS[1])
local value = false
if n > tonumber(ARGV[1]) then value = n elseif n > 0 then value = redis.call('GET', KEYS[1]) end
if #KEYS == 1 then return {value} end
local held = false
if redis.call('STRLEN', KEYS[2]) <= tonumber(ARGV[2]) then held = redis.call('GET', KEYS[2]) end
return {value, held}
"""
#: the longest lock of ours (a sealed random token)
_LOCK_BYTES = 256
#: a value stored within its owner's budget: KEYS[1] the value, KEYS[2] the budget's bytes written this window;
#: ARGV the sealed value, its TTL (ms), the budget (bytes). 0 when it does not fit (not stored). A budget someone
#: wrote (not a number, negative) counts as empty; one without a TTL gets the window's.
_BUDGETED_SET = """
local size = string.len(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2])) or 0
if used ~= used or used < 0 then used = 0 end
if used + size > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[2], string.format('%d', used + size), 'KEEPTTL')
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
#: seconds between two log lines saying Redis refuses writes for want of memory
FULL_LOG_SECONDS = 60.0
#: a token bucket per key: ARGV rate (tokens/s), burst; returns 0 when a token was taken, else the seconds to
#: wait. State that is not a bucket this script wrote (not finite, out of range, from the future) is reset.
_BUCKET = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil or tokens ~= tokens or at ~= at or tokens < 0 or tokens > burst
   or at > t + 1 or at < t - 86400 then
  tokens, at = burst, t
end
tokens = math.min(burst, tokens + math.max(0, t - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', t))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class Codec(Protocol):
    """How one cache's keys and values travel through Redis."""

    def key(self, key: Any) -> str: ...

    def dump(self, value: Any) -> Any: ...

    def load(self, data: Any) -> Any: ...


class RedisLayer:
    """One Redis connection pool per process, and the shared loads, locks and buckets on it."""

    def __init__(
        self,
        client: aioredis.Redis,
        signing_key: str,
        prefix: str,
        timeout: float,
        lock_ttl: float,
        clock: Callable[[], float] = time.time,
        *,
        metrics: Metrics,
    ) -> None:
        self._redis = client
        #: each call timed and counted by outcome (ok, timeout, error)
        self._metrics = metrics
        self._envelope = Envelope(signing_key.encode(), clock)
        self._prefix = prefix
        self._timeout = timeout
        self._lock_ttl = lock_ttl
        self._lock_ms = max(1, int(lock_ttl * 1000))
        self.degraded = False
        #: values and locks refused: a bad signature, another format, or past their expiry (a metric)
        self.tampered = 0
        self._release = client.register_script(_RELEASE)
        self._bounded_get = client.register_script(_BOUNDED_GET)
        self._budgeted_set = client.register_script(_BUDGETED_SET)
        #: when a Redis refusing writes for want of memory may be said again (monotonic seconds)
        self._full_said_until = 0.0
        self._bucket = client.register_script(_BUCKET)
        #: lock releases still under way for a load that was cancelled (each ends within ``timeout``)
        self._letting_go: set[asyncio.Task[Any]] = set()

    # -- the envelope ---------------------------------------------------------------------------

    def _open(self, rkey: str, stored: bytes | int) -> bytes | None:
        """The payload of a value read from Redis, or None: refused (and counted) when its envelope does not open,
        or when it was too long to read (``stored`` is then its length)."""
        if isinstance(stored, int):
            payload, why = None, "oversize"
        else:
            payload, why = self._envelope.open(rkey, stored)
        if payload is None:
            self._refused(why)
        return payload

    def _refused(self, why: str) -> None:
        self.tampered += 1
        log.error(
            "a shared value was refused (%s) and is ignored: someone wrote to Redis, or the signing keys"
            " differ across the fleet",
            why,
            extra={"event": "shared_value_refused", "reason": why},
        )

    # -- Redis calls, each with its timeout; a failure marks the layer degraded ---------------

    async def _call(self, call: Awaitable[Any]) -> Any:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                result = await call
        except OutOfMemoryError:  # Redis answers, but refuses writes (maxmemory, noeviction): not an outage
            self._metrics.redis_call("error", time.monotonic() - started)
            if (now := time.monotonic()) >= self._full_said_until:
                self._full_said_until = now + FULL_LOG_SECONDS
                log.warning(
                    "Redis refuses writes for want of memory: what would be shared stays in each process; give"
                    " Redis more memory or an eviction policy (said at most every %g s)",
                    FULL_LOG_SECONDS,
                    extra={"event": "shared_full"},
                )
            raise _RedisFailed() from None
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.redis_call(
                "timeout" if isinstance(exc, TimeoutError) else "error", time.monotonic() - started
            )
            if not self.degraded:
                log.warning(
                    "Redis failed (%s): serving from local caches until it answers again",
                    type(exc).__name__,
                    extra={"event": "shared_degraded"},
                )
            self.degraded = True
            raise _RedisFailed() from None
        self._metrics.redis_call("ok", time.monotonic() - started)
        if self.degraded:
            log.info("Redis answers again: the shared layer is back", extra={"event": "shared_restored"})
            self.degraded = False
        return result

    async def ping(self) -> bool:
        try:
            await self._call(self._redis.ping())
        except _RedisFailed:
            return False
        return True

    # -- shared loads ---------------------------------------------------------------------------

    async def load(self, key: Any, load: Callable[[], Awaitable[Any]], policy: SharePolicy) -> Any:
        """The fleet's answer for ``key``: from Redis, or loaded once for the fleet (or here, if Redis fails)."""
        codec = policy.codec
        rkey = f"{self._prefix}{policy.namespace}:{codec.key(key)}"
        lock = f"{rkey}:lock"
        try:
            found = await self._get(rkey, policy)
            if found is not None:
                return _settle(found, codec)
            held = self._envelope.seal(lock, secrets.token_hex(8).encode(), self._lock_ttl)
            if await self._call(self._redis.set(lock, held, nx=True, px=self._lock_ms)):
                return await self._load_for_fleet(rkey, lock, held, load, policy)
            found = await self._wait_for(rkey, lock, policy)
            if found is not None:
                return _settle(found, codec)
        except _RedisFailed:
            pass
        return await load()  # Redis failing, or the lock's holder gone (or not ours) without an answer

    async def _get(self, rkey: str, policy: SharePolicy) -> Any | None:
        [stored] = await self._call(self._bounded_get(keys=[rkey], args=[policy.max_bytes]))
        return self._decode(rkey, stored, policy)

    def _decode(self, rkey: str, stored: bytes | int | None, policy: SharePolicy) -> Any | None:
        """A value found in Redis, or None: none there, refused (its envelope, its size), or not fresh for this
        reader (an answer a writer with a longer TTL keeps)."""
        if stored is None:
            return None
        payload = self._open(rkey, stored)
        if payload is None:
            return None
        found = orjson.loads(payload)
        if isinstance(found, dict) and "value" in found and not policy.fresh(found["value"]):
            return None
        return found

    async def _wait_for(self, rkey: str, lock: str, policy: SharePolicy) -> Any | None:
        """Another process loads: its answer, or None (load here) once its lock is gone or is not a live lock of
        ours, and at the latest after ``timeout``: a lock costs no longer than a failed Redis call would."""
        deadline = time.monotonic() + self._timeout
        while True:
            stored, held = await self._call(self._bounded_get(keys=[rkey, lock], args=[policy.max_bytes, _LOCK_BYTES]))
            found = self._decode(rkey, stored, policy)
            if found is not None:
                return found
            if held is None or self._open(lock, held) is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(POLL_SECONDS, left))  # polling for the holder's answer, bounded by the deadline

    async def _load_for_fleet(
        self, rkey: str, lock: str, held: bytes, load: Callable[[], Awaitable[Any]], policy: SharePolicy
    ) -> Any:
        """Load while holding the fleet's lock for ``rkey``, store the answer signed, and let go on every path."""
        try:
            with contextlib.suppress(_RedisFailed):
                # another process may have loaded, stored and let go between the miss and this lock
                found = await self._get(rkey, policy)
                if found is not None:
                    return _settle(found, policy.codec)
            try:
                value = await load()
            except Exception as exc:
                if policy.negative_ttl > 0 and policy.cache_error(exc) and (error := _error_data(exc)) is not None:
                    await self._store(rkey, {"error": error}, policy.negative_ttl)
                raise
            if policy.ttl > 0 and (data := _dumped(policy, value)) is not None:
                await self._store(rkey, {"value": data}, policy.ttl, policy.budget)
            return value
        finally:
            await self._let_go(lock, held)

    async def _let_go(self, lock: str, held: bytes) -> None:
        """Delete the lock if it is still ours; a cancelled caller does not stop the release (it is shielded)."""
        task = asyncio.ensure_future(self._call(self._release(keys=[lock], args=[held])))
        self._letting_go.add(task)
        task.add_done_callback(_released)
        task.add_done_callback(self._letting_go.discard)
        with contextlib.suppress(_RedisFailed):
            await asyncio.shield(task)

    async def _store(self, rkey: str, data: dict[str, Any], ttl: float, budget: tuple[str, int] | None = None) -> None:
        """Keep a value for ``ttl``; with a ``budget`` (its owner, its bytes per ``ttl``), only while it fits."""
        sealed = self._envelope.seal(rkey, orjson.dumps(data), ttl)
        px = max(1, int(ttl * 1000))
        with contextlib.suppress(_RedisFailed):
            if budget is None:
                await self._call(self._redis.set(rkey, sealed, px=px))
                return
            owner, most = budget
            spent = f"{self._prefix}budget:{owner}"
            await self._call(self._budgeted_set(keys=[rkey, spent], args=[sealed, px, most]))

    # -- the fleet's rate limit -----------------------------------------------------------------

    async def rate(self, caller_key: str, rate: float, burst: int) -> int | None:
        """Seconds to wait (a 429) when the caller's fleet-wide bucket is empty; None when a token was taken.

        The wait is at most the time one token takes to come back (a bucket is validated by its
        script, and the answer once more here). Redis failing: None (the process's own bucket,
        checked first, still holds).
        """
        try:
            wait = await self._call(self._bucket(keys=[f"{self._prefix}rate:{caller_key}"], args=[rate, burst]))
        except _RedisFailed:
            return None
        if not isinstance(wait, int) or wait <= 0:
            return None
        return min(wait, max(1, math.ceil(1 / rate)))

    async def close(self) -> None:
        await self._redis.aclose()


class _RedisFailed(Exception):
    """Redis did not answer (error or timeout): the caller goes on without the shared layer."""


def _released(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed release was logged by ``_call``; the lock expires by itself


def _dumped(policy: SharePolicy, value: Any) -> Any | None:
    """``value`` in the shared layer's form, or None when it has none (a body that is not UTF-8 text): it is then
    answered, and kept in this process only."""
    try:
        return policy.codec.dump(value)
    except ValueError:
        log.warning(
            "a %s value could not be shared (not text) and stays in this process",
            policy.namespace,
            extra={"event": "shared_value_not_shared", "namespace": policy.namespace},
        )
        return None


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
