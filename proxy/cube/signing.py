"""The HS256 security context Cube receives (spec section 4)."""

from __future__ import annotations

from typing import Any

import jwt

from proxy.cube.tenants import Tenant


def security_claims(tenant: Tenant, issuer: str, now: int, ttl: int, gitlab_token: str | None) -> dict[str, Any]:
    return {"iat": now, "exp": now + ttl, "appId": tenant.app_id, "iss": issuer, "gitlabToken": gitlab_token}


def sign_security_context(tenant: Tenant, issuer: str, now: int, ttl: int, gitlab_token: str | None) -> str:
    """Pure: the JWT for one tenant at one second."""
    return jwt.encode(security_claims(tenant, issuer, now, ttl, gitlab_token), tenant.cube_api_key, algorithm="HS256")


class Signer:
    """Signs security contexts, reusing a token-less JWT within the same second.

    Claims stay exactly the spec's (``iat`` is whole seconds, so a token signed
    earlier in the same second is identical); only the HMAC work is saved.
    """

    def __init__(self, issuer: str, ttl: int, size: int = 4096) -> None:
        self._issuer = issuer
        self._ttl = ttl
        #: a plain dict, emptied when full: every entry is stale a second after it was made anyway
        self._recent: dict[Tenant, tuple[int, str]] = {}
        self._size = size

    def sign(self, tenant: Tenant, now: int, gitlab_token: str | None = None) -> str:
        if gitlab_token is not None:
            return sign_security_context(tenant, self._issuer, now, self._ttl, gitlab_token)
        cached = self._recent.get(tenant)
        if cached is not None and cached[0] == now:
            return cached[1]
        token = sign_security_context(tenant, self._issuer, now, self._ttl, None)
        if len(self._recent) >= self._size:
            self._recent.clear()
        self._recent[tenant] = (now, token)
        return token
