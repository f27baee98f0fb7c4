"""X-Request-Id in Cube's form ``<span-id>-span-<n>`` (spec section 4)."""

from __future__ import annotations

import itertools
import re
import uuid

REQUEST_ID_HEADER = "X-Request-Id"
_ALLOWED = re.compile(r"[A-Za-z0-9+/=._:-]{1,128}")
_SPAN_SUFFIX = re.compile(r"-span-\d+$")
_LAST_GROUP = 0xFFFFFFFFFFFF


class RequestIds:
    """Fresh ids shaped like a UUID: a random prefix per process, then a counter.

    Unique within a process (the counter) and across processes and restarts (the
    prefix's 74 random bits), and made without a system call per request, unlike uuid4.
    """

    def __init__(self) -> None:
        u = uuid.uuid4().hex
        self._prefix = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-"
        self._counter = itertools.count(int(u[20:], 16))

    def fresh(self) -> str:
        return f"{self._prefix}{next(self._counter) & _LAST_GROUP:012x}-span-1"


def normalise_request_id(incoming: str | None, ids: RequestIds) -> str:
    """Keep a well-formed caller id (adding ``-span-1`` if it has no span); else make a fresh one."""
    if incoming is not None and _ALLOWED.fullmatch(incoming):
        return incoming if _SPAN_SUFFIX.search(incoming) else f"{incoming}-span-1"
    return ids.fresh()
