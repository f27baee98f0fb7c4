"""URLs as they may be shown (settings printed, status and readiness pages, logs, errors): without their secrets.

One rule for every URL form the settings accept (``http``, ``https``, ``redis``,
``rediss``, ``unix`` and anything else): the user information (``user:password@``) is
replaced whole, and so is the value of every query parameter whose name says it holds a
secret (``password``, ``token``, ``secret``, ``key``, ``auth``...). It parses by hand, so
a URL no library accepts is still shown safely rather than failing the page.
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"
#: a URL's parts: scheme, user information, the rest up to the query, the query, the fragment
_URL = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^@/?#\s]*@)?(?P<rest>[^?#\s]*)(?P<tail>[?#]\S*)?"
)
#: a query parameter whose value is a secret, by its name
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&;#\s]*(?:pass|pwd|secret|token|key|auth|credential)[^=&;#\s]*=)[^&;#\s]*")


def _shown(match: re.Match[str]) -> str:
    userinfo = f"{REDACTED}@" if match.group("userinfo") else ""
    tail = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", match.group("tail") or "")
    return f"{match.group('head')}{userinfo}{match.group('rest')}{tail}"


def redact_url(url: str) -> str:
    """``url`` without user information or secret query parameters (any scheme; a malformed URL too)."""
    return redact_urls(url)


def redact_urls(text: str) -> str:
    """``text`` with every URL in it shown as ``redact_url`` shows it."""
    if "://" not in text:
        return text
    return _URL.sub(_shown, text)
