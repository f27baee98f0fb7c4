"""The redaction guard every log line passes: no credential in any form reaches a log.

It removes the value after any credential's name, in any case and with any spacing
around ``:`` or ``=`` (header and query-string forms: ``PRIVATE-TOKEN``,
``private_token``, ``access_token``, ``JOB-TOKEN``, ``Authorization``, ``X-CSRF-Token``,
``csrf_token``, the ``_gitlab_session`` cookie), the whole value of a ``Cookie`` header,
anything shaped like a GitLab token (``glpat-...``, ``gloas-...``) wherever it stands, and the
user information and secret query parameters of every URL (``proxy/urls.py``).
"""

from __future__ import annotations

import re

from proxy.urls import redact_urls

# a credential's name, then ":" or "=" with any spacing (raw, or escaped as in a bytes repr), then its value
_NAMED = re.compile(
    r"(private[-_]token|access[-_]token|job[-_]token|authorization|x[-_]csrf[-_]token|csrf[-_]token|_gitlab_session)"
    r"((?:\s|\\[tnr])*[=:](?:\s|\\[tnr])*)(?:(?:bearer|basic)\s+)?[^\s&\"',;]+",
    re.IGNORECASE,
)
# a Cookie header: every cookie in it, up to the end of the line or the quote around it
_COOKIE = re.compile(r"(cookie)(\s*:\s*)[^\r\n\"']+", re.IGNORECASE)
# GitLab's token prefixes (personal, OAuth, CI job, deploy, trigger, runner, feed, ...)
_GITLAB_TOKEN = re.compile(r"\bgl[a-z]{2,8}-[A-Za-z0-9_\-]{8,}")
#: words one of which a line must hold (in any case) for any pattern above to match
_TRIGGERS = ("token", "authorization", "cookie", "session", "gl", "://")


def redact(text: str) -> str:
    # ASCII text holding none of the trigger words cannot match (the scans cost about 25 µs a
    # line); other text, where re's case folding also matches the dotless i and the Kelvin
    # sign, always gets the full scan.
    if text.isascii():
        lowered = text.lower()
        if not any(word in lowered for word in _TRIGGERS):
            return text
    text = redact_urls(text)
    text = _COOKIE.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)
    text = _NAMED.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)
    return _GITLAB_TOKEN.sub("[REDACTED]", text)
