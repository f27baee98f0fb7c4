"""Where an answer came from: one verdict per request, the access line's word and the ``X-Cache`` header together.

A request gets at most one verdict, from whichever cache had the say: the meta cache, the
coalescer (with the answer cache off), or the answer cache. Only the answer cache's verdicts
carry a header (``X-Cache``, spec section 6): a meta answer or a coalesced call says nothing
in its head, so a caller cannot tell a cache that is off from one that missed.
"""

from __future__ import annotations

from typing import NamedTuple


class Verdict(NamedTuple):
    #: the access line's ``cache`` field and the server span's ``proxy.cache``
    name: str
    #: ``X-Cache``'s value when the answer cache gave the verdict; None for the others
    header: str | None


#: the answer cache's verdicts (``caching/cached_queries.py``)
HIT = Verdict("hit", "HIT")
STALE = Verdict("stale", "STALE")
MISS = Verdict("miss", "MISS")
#: a call the answer cache had no say in: a personal (``include_token``) one, or one that renews Cube's cache
BYPASS = Verdict("bypass", "BYPASS")
#: the meta cache's verdicts
META_HIT = Verdict("hit", None)
META_MISS = Verdict("miss", None)
#: with the answer cache off: a call that joined another's upstream call, or made its own
SHARED = Verdict("shared", None)
ALONE = Verdict("miss", None)
