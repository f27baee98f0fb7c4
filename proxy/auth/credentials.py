"""Finding the caller's GitLab credential in a request (spec section 2)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Literal

from proxy.errors import ApiError, unauthorized

PRIVATE_TOKEN = "PRIVATE-TOKEN"  # noqa: S105 - a header name
AUTHORIZATION = "Authorization"
JOB_TOKEN = "JOB-TOKEN"  # noqa: S105 - a header name
COOKIE = "Cookie"
CSRF_TOKEN = "X-CSRF-Token"  # noqa: S105 - a header name
#: the request headers a credential is read from (a job token's only to be refused; the cookie and
#: the CSRF token for GitLab's browser session, spec section 2.1)
CREDENTIAL_HEADERS = (PRIVATE_TOKEN, AUTHORIZATION, JOB_TOKEN, COOKIE, CSRF_TOKEN)
Scheme = Literal["private", "bearer", "session"]

# Token prefixes GitLab gives CI job tokens, CI build tokens and deploy tokens: never accepted here.
_REFUSED_PREFIXES = ("glcbt-", "gldt-")
#: printable ASCII without spaces, as every GitLab token is
_TOKEN = re.compile(r"[!-~]{1,1024}")
#: a cookie's value (RFC 6265 cookie-octets); a session id is far shorter than the bound
_COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]{1,4096}")
#: a Cookie header longer than this is not searched (browsers cap one cookie at 4 KB, a header near 8 KB)
MAX_COOKIE_HEADER = 16 * 1024


class Credential:
    """A caller's token (or GitLab session) and the form GitLab should see it in; its repr never shows either.

    ``scheme`` is the header form: ``private`` (``PRIVATE-TOKEN``), ``bearer``
    (``Authorization: Bearer``) or ``session`` (GitLab's session cookie, with the request's
    CSRF token if it sent one). Hashes are the only forms of a token, cookie or CSRF token
    used as keys or logged.
    """

    __slots__ = ("caller_key", "cookie_name", "csrf", "csrf_key", "key", "scheme", "token")

    def __init__(self, scheme: Scheme, token: str, csrf: str | None = None, cookie_name: str = "") -> None:
        self.scheme = scheme
        #: the token, or the session cookie's value
        self.token = token
        #: the session's CSRF token as the request sent it (sessions only)
        self.csrf = csrf
        self.cookie_name = cookie_name
        #: sha256 of the token alone: the caller, whatever header carried it (its rate-limit bucket)
        self.caller_key = hashlib.sha256(token.encode()).hexdigest()
        #: the token's hash with its header form: the key of GitLab's answers, since a token may be
        #: valid in one form only (an OAuth token as Bearer, not as PRIVATE-TOKEN)
        self.key = f"{scheme}:{self.caller_key}"
        #: the session and CSRF token together: the key of GitLab's verdict on the pair
        self.csrf_key = (
            hashlib.sha256(f"{token}\0{csrf}".encode()).hexdigest()
            if csrf is not None and scheme == "session"
            else None
        )

    def __repr__(self) -> str:
        return f"Credential(scheme={self.scheme!r}, key={self.key!r})"  # never the token

    def gitlab_headers(self, with_csrf: bool = False) -> dict[str, str]:
        """The headers that carry this credential to GitLab: only the session cookie of a browser's cookies."""
        if self.scheme == "private":
            return {PRIVATE_TOKEN: self.token}
        if self.scheme == "bearer":
            return {AUTHORIZATION: f"Bearer {self.token}"}
        headers = {COOKIE: f"{self.cookie_name}={self.token}"}
        if with_csrf and self.csrf is not None:
            headers[CSRF_TOKEN] = self.csrf
        return headers


def extract_credential(
    headers: Mapping[str, str], query: Mapping[str, str], session_cookie: str | None = None
) -> Credential:
    """The request's credential, or a 401 ApiError: missing, malformed, or a refused kind.

    Tokens first, in GitLab's order; an ``Authorization`` header that is not Bearer is no
    credential (a browser's transport sends ``Authorization: undefined``). With no token and
    ``session_cookie`` named (sessions on), GitLab's session cookie is the credential, with
    the request's ``X-CSRF-Token`` if any (spec section 2.1).
    """
    if JOB_TOKEN in headers or "job_token" in query:
        raise unauthorized()
    token: str | None
    scheme: Scheme
    if (token := headers.get(PRIVATE_TOKEN)) is not None:
        scheme, token = "private", token.strip()
    elif (token := _bearer(headers.get(AUTHORIZATION))) is not None:
        scheme = "bearer"
    elif (token := query.get("private_token")) is not None:
        scheme, token = "private", token.strip()
    elif (token := query.get("access_token")) is not None:
        scheme, token = "bearer", token.strip()
    elif session_cookie is not None and (token := _session(headers.get(COOKIE), session_cookie)) is not None:
        csrf = headers.get(CSRF_TOKEN)
        # a malformed CSRF token is none: a POST without one is refused without asking GitLab
        return Credential("session", token, csrf if csrf and _TOKEN.fullmatch(csrf) else None, session_cookie)
    else:
        raise unauthorized()
    # checked before anything is made of it: a token of other bytes (non-ASCII, undecodable) is a 401
    if not _plausible(token):
        raise unauthorized()
    return Credential(scheme, token)


def _bearer(authorization: str | None) -> str | None:
    """The token of a Bearer ``Authorization`` header; any other scheme is no credential (GitLab ignores it)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _session(cookie_header: str | None, name: str) -> str | None:
    """The value of the first cookie called ``name`` in a Cookie header, if it is a well-formed one."""
    if not cookie_header or len(cookie_header) > MAX_COOKIE_HEADER:
        return None
    for pair in cookie_header.split(";"):  # bounded by the header's length
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value if _COOKIE_VALUE.fullmatch(value) else None
    return None


def _plausible(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None and not token.startswith(_REFUSED_PREFIXES)


def credential_error(exc: ApiError) -> bool:
    """True when an ApiError is the credential's fault (so it is cached as negative)."""
    return exc.status in {401, 403, 404}
