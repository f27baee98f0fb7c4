"""X-Request-Id in Cube's form ``<span-id>-span-<n>`` (spec section 4)."""

from __future__ import annotations

import re
import uuid

_ALLOWED = re.compile(r"[A-Za-z0-9+/=._:-]{1,128}")
_SPAN_SUFFIX = re.compile(r"-span-\d+$")


def normalise_request_id(incoming: str | None) -> str:
    """Keep a well-formed caller id (adding ``-span-1`` if it has no span); else make a fresh one."""
    if incoming is not None and _ALLOWED.fullmatch(incoming):
        return incoming if _SPAN_SUFFIX.search(incoming) else f"{incoming}-span-1"
    return f"{uuid.uuid4()}-span-1"
