"""Load and dry-run through the answer cache: lookups, the fleet's copy in Redis, and stale entries' refreshes.

The rules are ``answer_cache.py``'s. With ``[redis]``, a miss asks the fleet first: an
answer up to ``[cube] answer_shared_max_bytes`` is kept in Redis for its ``answer_ttl``,
signed like every shared value (a Redis writer cannot change a number a viewer sees), and
one process of the fleet asks Cube for it; a refresh goes the same way, so a stale window
costs Cube one call for the whole fleet. Larger answers stay in each process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from proxy.caching.answer_cache import AnswerCache, AnswerKey, CacheableQuery, CachedAnswer, answer_key
from proxy.caching.coalesce import QueryAnswer, SharedStream
from proxy.caching.kept import kept_answer
from proxy.caching.singleflight import SharePolicy
from proxy.caching.verdict import BYPASS, HIT, MISS, STALE, Verdict
from proxy.cube.client import Buffered, Streamed
from proxy.cube.tenants import Tenant
from proxy.observe.metrics import Metrics
from proxy.shared.codecs import AnswerCodec
from proxy.shared.layer import SharedLayer

log = logging.getLogger(__name__)

#: stale entries whose last refresh failed, remembered at most (the oldest forgotten first: it is then tried again)
BACKOFF_ENTRIES = 4096
#: the shortest wait between two refreshes of one entry after a failed one (otherwise: the tenant's answer_ttl)
MIN_BACKOFF_SECONDS = 1.0


class Record(Protocol):
    """What the cache reads and writes of a request's record (the pipeline's ``Exchange``)."""

    #: the verdict, written here
    cache: Verdict | None
    #: a kept answer's age in seconds, written here
    age: int | None
    #: whether the caller takes its answer gzipped, read here
    gzip: bool


R = TypeVar("R", bound=Record)


class _NotKept(Exception):
    """Cube's answer is not one the fleet keeps (an error, Continue wait, a stream, too large): it is returned."""

    def __init__(self, answer: QueryAnswer) -> None:
        super().__init__("not kept")
        self.answer = answer


def _never(exc: BaseException) -> bool:
    return False


def _discard(answer: QueryAnswer) -> None:
    """Let go of an answer nobody will read (a refresh's stream: too large to keep)."""
    if isinstance(answer, Streamed | SharedStream):
        answer.close()


class CachedQueries:
    """The answer cache of one process, and its refreshes (at most one per entry, all ended at shutdown)."""

    def __init__(self, cache: AnswerCache, metrics: Metrics, shared_max_bytes: int, shared_tenant_bytes: int) -> None:
        self.cache = cache
        self._metrics = metrics
        self._shared_max = shared_max_bytes
        #: bytes of answers one project may write to the fleet per answer_ttl
        self._shared_tenant_bytes = shared_tenant_bytes
        self._shared: SharedLayer | None = None
        self._codec = AnswerCodec()
        self._refreshing: dict[AnswerKey, asyncio.Task[None]] = {}
        #: entries whose last refresh failed, and when the next may be tried (wall-clock, the cache's clock)
        self._backoff: OrderedDict[AnswerKey, float] = OrderedDict()

    def share(self, shared: SharedLayer) -> None:
        """Answers up to ``answer_shared_max_bytes`` through the fleet's shared layer."""
        self._shared = shared

    @property
    def refreshing(self) -> int:
        """Refreshes under way."""
        return len(self._refreshing)

    async def answer(
        self,
        exchange: R,
        tenant: Tenant,
        endpoint: str,
        query: CacheableQuery,
        ask: Callable[[R | None], Awaitable[QueryAnswer]],
    ) -> QueryAnswer:
        """The caller's answer: from the cache, or Cube's (kept when it may be). See ``answer_cache.py``. A personal
        (``include_token``) call never comes here: the pipeline asks Cube for it alone (``bypassed``)."""
        key = answer_key(tenant, endpoint, query)
        if query.renews:  # Cube renews its cache: a good answer makes the plain query's entry older than Cube's
            answer = await ask(exchange)
            if self._keepable(answer) is not None:
                self.cache.forget(key)
            return self._asked(exchange, BYPASS, answer)
        found = self.cache.get(key)
        if found is not None:
            if found[1] == STALE:
                self._refresh(key, ask)
            return self._served(exchange, *found)
        fetched, kept = await self._fetch(key, ask, exchange)
        if fetched is None:  # the fleet had it: Cube was not asked here
            assert kept is not None
            return self._served(exchange, kept, HIT)
        self._asked(exchange, MISS, fetched)
        # Cube's answer as kept (compressed once, with its validator), unless the caller takes it plain
        return kept.answer if kept is not None and exchange.gzip else fetched

    async def close(self) -> None:
        """End every refresh under way (shutdown)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- helpers --------------------------------------------------------------------------------

    def _keepable(self, answer: QueryAnswer) -> bytes | None:
        """The body of an answer the cache keeps: a whole 200, not Continue wait, not too large."""
        if (
            isinstance(answer, Buffered)
            and answer.status == 200
            and not answer.continue_wait
            and self.cache.keeps(answer.body)
        ):
            return answer.body
        return None

    async def _fetch(
        self, key: AnswerKey, ask: Callable[[R | None], Awaitable[QueryAnswer]], exchange: R | None
    ) -> tuple[QueryAnswer | None, CachedAnswer | None]:
        """Cube's answer (asked here; None when the fleet had it) and the entry kept for it in this process, if
        one was."""
        shared = self._shared
        if shared is None:
            answer = await ask(exchange)
            body = self._keepable(answer)
            return answer, None if body is None else self.cache.put(key, body)
        asked: list[QueryAnswer] = []

        async def load() -> tuple[bytes, float]:
            answer = await ask(exchange)
            asked.append(answer)
            body = self._keepable(answer)
            if body is None or len(body) > self._shared_max:
                raise _NotKept(answer)
            return body, self.cache.clock()

        ttl = key.tenant.answer_ttl
        clock = self.cache.clock

        def fresh(data: Any) -> bool:  # by this reader's TTL, whatever the writer's was (``AnswerCodec``'s form)
            return bool(clock() - float(data["stored"]) < ttl)

        budget = (f"answers:{key.tenant.app_id}", self._shared_tenant_bytes)
        policy = SharePolicy("answers", self._codec, ttl, 0.0, _never, 2 * self._shared_max + 1024, fresh, budget)
        try:
            body, stored = await shared.load(key, load, policy)
        except _NotKept as not_kept:
            kept_body = self._keepable(not_kept.answer)  # too large for the fleet, not for this process
            return not_kept.answer, None if kept_body is None else self.cache.put(key, kept_body)
        kept = self.cache.put(key, body, stored)
        if asked:
            return asked[0], kept
        return None, kept if kept is not None else CachedAnswer(kept_answer(200, body), stored)

    def _refresh(self, key: AnswerKey, ask: Callable[[Any], Awaitable[QueryAnswer]]) -> None:
        """One refresh per entry at a time, and after a failed one none before its backoff ends (the tenant's
        ``answer_ttl``, at least ``MIN_BACKOFF_SECONDS``): a Cube failing fast is asked once per interval."""
        if key in self._refreshing or self.cache.clock() < self._backoff.get(key, 0.0):
            return
        task = asyncio.get_running_loop().create_task(self._refresh_now(key, ask))
        self._refreshing[key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(key, None))

    async def _refresh_now(self, key: AnswerKey, ask: Callable[[Any], Awaitable[QueryAnswer]]) -> None:
        """Ask again for a stale entry; a failure leaves it to be served until its stale window ends."""
        try:
            answer, _ = await self._fetch(key, ask, None)
        except Exception as exc:
            self._failed(key, type(exc).__name__)
            return
        if answer is None or self._keepable(answer) is not None:  # the fleet's, or Cube's kept answer
            self._backoff.pop(key, None)
        else:
            self._failed(key, f"Cube answered {answer.status}" if isinstance(answer, Buffered) else "a stream")
        if answer is not None:
            _discard(answer)

    def _failed(self, key: AnswerKey, why: str) -> None:
        """A refresh failed: the entry waits its backoff; said once, at the first failure of a run of them."""
        interval = max(MIN_BACKOFF_SECONDS, key.tenant.answer_ttl)
        if key not in self._backoff:
            log.warning(
                "refreshing a stale answer failed (%s); tried again at most every %g s, the stale answer served"
                " until its stale window ends",
                why,
                interval,
                extra={"event": "answer_refresh_failed", "project": key.tenant.project_id},
            )
        self._backoff[key] = self.cache.clock() + interval
        self._backoff.move_to_end(key)
        while len(self._backoff) > BACKOFF_ENTRIES:
            self._backoff.popitem(last=False)

    def _served(self, exchange: Record, entry: CachedAnswer, verdict: Verdict) -> Buffered:
        exchange.age = max(0, int(self.cache.clock() - entry.stored))
        self._note(exchange, verdict)
        return entry.answer

    def bypassed(self, exchange: Record) -> None:
        """Record a call the cache had no say in (a personal one): ``X-Cache: BYPASS``."""
        self._note(exchange, BYPASS)

    def _asked(self, exchange: Record, verdict: Verdict, answer: QueryAnswer) -> QueryAnswer:
        self._note(exchange, verdict)
        return answer

    def _note(self, exchange: Record, verdict: Verdict) -> None:
        exchange.cache = verdict
        assert verdict.header is not None  # the answer cache's verdicts all have their header
        self._metrics.answer_cache(verdict.header)


def answer_headers(exchange: Record) -> dict[str, str] | None:
    """``X-Cache`` (and ``Age`` for a cached answer) when the answer cache gave the verdict; None when it did not."""
    verdict = exchange.cache
    if verdict is None or verdict.header is None:
        return None
    if exchange.age is None:
        return {"X-Cache": verdict.header}
    return {"X-Cache": verdict.header, "Age": str(exchange.age)}
