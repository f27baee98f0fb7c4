"""How each shared cache's keys and values travel through Redis: keys are hashes or ids, values plain data.

No value carries a secret: a caller is its id, name, admin flag and scopes; a project, a
membership level and a CSRF verdict are numbers; a meta answer is Cube's JSON. Keys are
made of hashes already (a token's, a cookie's, a CSRF token's) and ids; a tenant's key
hashes its Cube URL and key.
"""

from __future__ import annotations

import hashlib
from typing import Any


class JsonCodec:
    """Keys that are strings or tuples of strings and numbers; values that are JSON already (ids, levels)."""

    def key(self, key: Any) -> str:
        return "|".join(map(str, key)) if isinstance(key, tuple) else str(key)

    def dump(self, value: Any) -> Any:
        return value

    def load(self, data: Any) -> Any:
        return data


class CallerCodec(JsonCodec):
    """A GitLab caller (``proxy.auth.authorizer.Caller``), given the class to rebuild it with."""

    def __init__(self, make: Any, plain: Any = None) -> None:
        #: an answer from its status and plain body (as a cache keeps it), and a kept answer's plain body
        self._make = make
        self._plain = plain if plain is not None else (lambda value: value.body)

    def dump(self, value: Any) -> Any:
        return {"id": value.user_id, "name": value.username, "admin": value.is_admin, "scopes": sorted(value.scopes)}

    def load(self, data: Any) -> Any:
        return self._make(int(data["id"]), str(data["name"]), bool(data["admin"]), frozenset(data["scopes"]))


class MetaCodec(JsonCodec):
    """A tenant's meta answer (``Buffered``), keyed by the tenant's app id and a hash of its Cube URL and key."""

    def __init__(self, make: Any, plain: Any = None) -> None:
        #: an answer from its status and plain body (as a cache keeps it), and a kept answer's plain body
        self._make = make
        self._plain = plain if plain is not None else (lambda value: value.body)

    def key(self, key: Any) -> str:
        digest = hashlib.sha256(f"{key.cube_base_url}\0{key.cube_api_key}".encode()).hexdigest()[:32]
        return f"{key.app_id}|{digest}"

    def dump(self, value: Any) -> Any:
        return {"status": value.status, "body": self._plain(value).decode()}

    def load(self, data: Any) -> Any:
        return self._make(int(data["status"]), str(data["body"]).encode())


class AnswerCodec(JsonCodec):
    """A whole load or dry-run answer and when Cube gave it, keyed by a hash of the tenant (its app id, Cube URL
    and key), the endpoint and the canonical query: the key holds no query text and no secret."""

    def key(self, key: Any) -> str:
        tenant = key.tenant
        digest = hashlib.sha256(
            b"\0".join((tenant.cube_base_url.encode(), tenant.cube_api_key.encode(), key.endpoint.encode(), key.query))
        ).hexdigest()[:40]
        return f"{tenant.app_id}|{digest}"

    def dump(self, value: Any) -> Any:
        body, stored = value
        return {"body": body.decode(), "stored": stored}

    def load(self, data: Any) -> Any:
        return str(data["body"]).encode(), float(data["stored"])
