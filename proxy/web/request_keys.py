"""Typed per-request state shared between middlewares and views."""

from __future__ import annotations

from aiohttp import web

from proxy.auth.credentials import Credential

REQUEST_ID = web.RequestKey("request_id", str)
CREDENTIAL = web.RequestKey("credential", Credential)
#: the numeric project id once known (for the access log).
PROJECT = web.RequestKey("project", int)
#: "hit", "miss" or "shared": where the answer came from (for the access log).
CACHE = web.RequestKey("cache", str)
#: set when a streamed answer was cut off because Cube's body broke (its 200 never completed).
ABORTED = web.RequestKey("aborted", bool)
