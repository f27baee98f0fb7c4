"""The answer cache: whole load and dry-run answers reused for every caller allowed on a project.

A tenant's answer to one query is the same for every caller GitLab lets on the project
(the security context Cube sees is the project's), so a dashboard opened by many viewers
need not ask Cube once per viewer. Rules, in ``Pipeline.answer_query``'s order:

- off for a tenant whose ``answer_ttl`` is 0 (the default): no lookup, no header;
- ``BYPASS`` for an ``include_token`` call (its answer carries the caller's own token) and
  for a query that renews (``renewQuery`` set to anything but ``false``: Cube is asked, and a
  good answer drops the plain query's entry, so the next plain call asks Cube's renewed cache;
  the renewed answer itself, which echoes ``renewQuery``, is never kept for the plain query);
- ``HIT`` within ``answer_ttl`` of Cube's answer; ``STALE`` for ``answer_stale`` seconds
  more, while one refresh per entry asks Cube in the background (a refresh that fails
  leaves the stale answer until its window ends; then callers ask Cube and see its error);
- ``MISS`` otherwise: Cube is asked (through the coalescer), and the answer kept only when
  it is a whole ``200`` that is not "Continue wait" and at most ``answer_max_bytes``.

The key is the tenant (project, Cube URL and key), the endpoint and the query in canonical
form (``request_body.canonical``: object keys sorted but ``order``'s, list order kept: both
are meaningful to Cube), ``renewQuery: false`` kept as sent. Entries are bounded by bytes: the least
recently used go first, and each tenant holds at most its share of the bytes, so a tenant
asking many distinct queries evicts its own answers first, never more than its share of others'.
An answer is kept compressed once (``encoding.encode_kept``) and the bytes kept are what count,
so the same budget holds many times more answers; a compressing caller's hit costs no compression.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, Protocol

from proxy.caching.kept import kept_answer
from proxy.caching.verdict import HIT, STALE, Verdict
from proxy.cube.client import Buffered
from proxy.cube.tenants import Tenant

#: what a kept answer weighs beyond its body (the key, the entry): so many tiny answers are bounded too
ENTRY_OVERHEAD = 512
#: entries the sweep looks at per call (the oldest first)
SWEEP_ENTRIES = 256


class CacheableQuery(Protocol):
    """What the cache reads of a parsed query (the pipeline's ``QueryRequest``)."""

    @property
    def fingerprint(self) -> bytes:
        """The query and queryType in canonical form."""

    @property
    def plain_fingerprint(self) -> bytes:
        """The same without ``renewQuery``: the entry a renewal drops."""

    @property
    def renews(self) -> bool:
        """Whether the call asks Cube to renew its own cache."""


class AnswerKey(NamedTuple):
    tenant: Tenant
    endpoint: str
    #: the query and queryType in canonical form
    query: bytes


class CachedAnswer(NamedTuple):
    #: the answer as kept (a whole 200, gzipped when long enough, with its content's hash)
    answer: Buffered
    #: when Cube gave it (wall-clock seconds, so an answer shared across the fleet keeps its age)
    stored: float


def answer_key(tenant: Tenant, endpoint: str, query: CacheableQuery) -> AnswerKey:
    """The query's key; for a call that renews, the key of the same query without ``renewQuery`` (the entry a
    renewal drops)."""
    return AnswerKey(tenant, endpoint, query.plain_fingerprint if query.renews else query.fingerprint)


class AnswerCache:
    """Whole answers by ``AnswerKey``, bounded by ``max_bytes``; each entry fresh for its tenant's ``answer_ttl``
    and served stale for ``answer_stale`` more. ``clock`` is wall-clock seconds."""

    def __init__(
        self, max_bytes: int, max_entry_bytes: int, clock: Callable[[], float] = time.time, tenant_share: float = 1.0
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        #: the bytes one tenant's entries may hold at most
        self.tenant_bytes = max(ENTRY_OVERHEAD, int(max_bytes * tenant_share))
        self._entries: OrderedDict[AnswerKey, CachedAnswer] = OrderedDict()
        #: each tenant's keys, least recently used first, and the bytes they hold
        self._tenants: dict[Tenant, OrderedDict[AnswerKey, None]] = {}
        self._held: dict[Tenant, int] = {}
        #: bytes held (bodies plus ``ENTRY_OVERHEAD`` each), and entries dropped to make room
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keeps(self, body: bytes) -> bool:
        """Whether an answer of this size may be kept."""
        return len(body) <= self.max_entry_bytes and len(body) + ENTRY_OVERHEAD <= self.tenant_bytes

    def get(self, key: AnswerKey) -> tuple[CachedAnswer, Verdict] | None:
        """The entry and ``HIT`` or ``STALE``; None when there is none or it is past its stale window."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored
        tenant = key.tenant
        if age < tenant.answer_ttl:
            self._used(key)
            return entry, HIT
        if age < tenant.answer_ttl + tenant.answer_stale:
            self._used(key)
            return entry, STALE
        self._drop(key)
        return None

    def put(self, key: AnswerKey, body: bytes, stored: float | None = None) -> CachedAnswer | None:
        """Keep ``body`` (Cube's whole 200) for ``key``, compressed once when long enough (the bytes kept are what
        counts), making room by dropping the least recently used; the entry kept, or None."""
        if not self.keeps(body):
            return None
        if key in self._entries:
            self._drop(key)
        answer = kept_answer(200, body)
        weight = len(answer.body) + ENTRY_OVERHEAD
        tenant = key.tenant
        own = self._tenants.setdefault(tenant, OrderedDict())
        while self._held.get(tenant, 0) + weight > self.tenant_bytes and own:
            self._drop(next(iter(own)))  # the tenant's own least recently used first
            self.evictions += 1
        while self.bytes + weight > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        entry = self._entries[key] = CachedAnswer(answer, self.clock() if stored is None else stored)
        self._tenants.setdefault(tenant, OrderedDict())[key] = None  # ``own`` is gone if its eviction emptied it
        self._held[tenant] = self._held.get(tenant, 0) + weight
        self.bytes += weight
        return entry

    def expire(self) -> None:
        """Drop entries past their stale window, looking at a bounded number of the least recently used."""
        now = self.clock()
        for key in list(itertools.islice(self._entries, SWEEP_ENTRIES)):
            entry = self._entries[key]
            if now - entry.stored >= key.tenant.answer_ttl + key.tenant.answer_stale:
                self._drop(key)

    def _used(self, key: AnswerKey) -> None:
        self._entries.move_to_end(key)
        self._tenants[key.tenant].move_to_end(key)

    def forget(self, key: AnswerKey) -> None:
        """Drop ``key``'s entry, if there is one (a renewal made it older than Cube's own cache)."""
        if key in self._entries:
            self._drop(key)

    def _drop(self, key: AnswerKey) -> None:
        entry = self._entries.pop(key)
        weight = len(entry.answer.body) + ENTRY_OVERHEAD
        self.bytes -= weight
        own = self._tenants[key.tenant]
        del own[key]
        self._held[key.tenant] -= weight
        if not own:  # a tenant with nothing kept takes no room
            del self._tenants[key.tenant], self._held[key.tenant]
