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
#: the request headers a credential is read from (a job token's only to be refused)
CREDENTIAL_HEADERS = (PRIVATE_TOKEN, AUTHORIZATION, JOB_TOKEN)

# Token prefixes GitLab gives CI job tokens, CI build tokens and deploy tokens: never accepted here.
_REFUSED_PREFIXES = ("glcbt-", "gldt-")
#: printable ASCII without spaces, as every GitLab token is
_TOKEN = re.compile(r"[!-~]{1,1024}")


class Credential:
    """A caller's token and the header form GitLab should see it in; its repr never shows the token."""

    __slots__ = ("caller_key", "key", "scheme", "token")

    def __init__(self, scheme: Literal["private", "bearer"], token: str) -> None:
        self.scheme = scheme
        self.token = token
        #: sha256 of the token alone: the caller, whatever header carried it (its rate-limit bucket)
        self.caller_key = hashlib.sha256(token.encode()).hexdigest()
        #: the token's hash with its header form: the key of GitLab's answers, since a token may be
        #: valid in one form only (an OAuth token as Bearer, not as PRIVATE-TOKEN). Hashes are the
        #: only forms of the token used as keys or logged.
        self.key = f"{scheme}:{self.caller_key}"

    def __repr__(self) -> str:
        return f"Credential(scheme={self.scheme!r}, key={self.key!r})"  # never the token

    def gitlab_headers(self) -> dict[str, str]:
        if self.scheme == "private":
            return {PRIVATE_TOKEN: self.token}
        return {AUTHORIZATION: f"Bearer {self.token}"}


def extract_credential(headers: Mapping[str, str], query: Mapping[str, str]) -> Credential:
    """The request's credential, or a 401 ApiError: missing, malformed, or a refused kind."""
    if JOB_TOKEN in headers or "job_token" in query:
        raise unauthorized()
    credential: Credential | None = None
    if (token := headers.get(PRIVATE_TOKEN)) is not None:
        credential = Credential("private", token.strip())
    elif (authorization := headers.get(AUTHORIZATION)) is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise unauthorized()
        credential = Credential("bearer", token.strip())
    elif (token := query.get("private_token")) is not None:
        credential = Credential("private", token.strip())
    elif (token := query.get("access_token")) is not None:
        credential = Credential("bearer", token.strip())
    if credential is None or not _plausible(credential.token):
        raise unauthorized()
    return credential


def _plausible(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None and not token.startswith(_REFUSED_PREFIXES)


def credential_error(exc: ApiError) -> bool:
    """True when an ApiError is the credential's fault (so it is cached as negative)."""
    return exc.status in {401, 403, 404}
