"""A double of Cube 1.x, answering as Cube 1.7.43 was recorded answering (its JavaScript paths, and the native
result formatter's shapes reproduced). The real Cube 1.x cannot be installed here (from 0.34 on, its install
downloads a native module from outside the npm registry), so the contract tests run against this double as well
as against the real 0.33.65.

What differs from 0.33, and what this double answers:

- every answer has Express' weak ``ETag``, ``Keep-Alive: timeout=5`` and ``X-Powered-By: Express``;
- a load: ``{"queryType": "regularQuery", "results": [{..., "data": [...], "lastRefreshTime": ...,
  "slowQuery": false, "dataSource": "default", "dbType": "postgres", "external": false}], "pivotQuery":
  {...}, "slowQuery": false}``, counts as strings;
- errors carry a ``type``: an unknown member is ``400 {"type": "UserError", "error": "'nope' not found for path
  'TrackedEvents.nope'"}``;
- "Continue wait" comes after ``continue_wait`` seconds (1.x: 10 s by default, only ``cube.js``'s
  ``orchestratorOptions.continueWaitTimeout`` changes it; 0.33: 5 s): a slow query answers its data only after
  ``query_seconds``, until then Continue wait once per ``continue_wait``;
- a stopped database: first ``200 {"error": "Continue wait"}``, then ``400 {"error": "Error: ResourceRequest
  timed out (postgres#default)"}``, and ``/readyz`` is ``500 {"health": "DOWN"}``;
- ``/cubejs-api/v1/readyz`` does not exist (404, HTML);
- a bad token: ``403 {"error": "Invalid token"}``; none: ``403 {"error": "Authorization header isn't set"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from aiohttp import web

MEMBERS = {"TrackedEvents.count", "TrackedEvents.eventName", "TrackedEvents.derivedTstamp"}


@dataclass
class Cube1x:
    secret: str
    #: seconds Cube waits before saying Continue wait (1.x's default is 10; tests scale it down)
    continue_wait: float = 10.0
    #: seconds a query takes (0: answered at once)
    query_seconds: float = 0.0
    database_up: bool = True
    rows: list[dict[str, Any]] = field(default_factory=lambda: [{"TrackedEvents.count": "5"}])
    #: each call: (endpoint, appId or None)
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    #: when each distinct query was first asked (a slow query finishes ``query_seconds`` after it)
    _started: dict[bytes, float] = field(default_factory=dict)
    #: the stopped database's sequence: Continue wait once, then the pool's timeout
    _waited: set[bytes] = field(default_factory=set)

    @staticmethod
    def _express(status: int, body: Any) -> web.Response:
        raw = orjson.dumps(body)
        digest = hashlib.sha1(raw).hexdigest()[:27]  # noqa: S324 - an ETag, as Express makes it
        tag = f'W/"{len(raw):x}-{digest}"'
        headers = {"ETag": tag, "Keep-Alive": "timeout=5", "X-Powered-By": "Express"}
        return web.Response(status=status, body=raw, content_type="application/json", headers=headers)

    def _claims(self, request: web.Request) -> dict[str, Any] | web.Response:
        token = request.headers.get("Authorization")
        if not token:
            return self._express(403, {"error": "Authorization header isn't set"})
        try:
            return jwt.decode(token.removeprefix("Bearer "), self.secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return self._express(403, {"error": "Invalid token"})

    async def _api(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        claims = self._claims(request)
        if isinstance(claims, web.Response):
            self.calls.append((endpoint, None))
            return claims
        self.calls.append((endpoint, claims.get("appId")))
        if endpoint == "meta":
            return self._express(200, {"cubes": [{"name": "TrackedEvents", "type": "cube", "measures": [
                {"name": "TrackedEvents.count", "type": "number", "aggType": "count"}]}]})  # fmt: skip
        body = await request.json()
        query = body.get("query", {})
        unknown = [m for m in (*query.get("measures", []), *query.get("dimensions", [])) if m not in MEMBERS]
        if unknown:
            member = unknown[0]
            return self._express(
                400, {"type": "UserError", "error": f"'{member.split('.')[-1]}' not found for path '{member}'"}
            )
        key = orjson.dumps(query, option=orjson.OPT_SORT_KEYS)
        if not self.database_up:
            if key not in self._waited:
                self._waited.add(key)
                await asyncio.sleep(self.continue_wait)
                return self._express(200, {"error": "Continue wait"})
            return self._express(400, {"error": "Error: ResourceRequest timed out (postgres#default)"})
        started = self._started.setdefault(key, time.monotonic())
        left = started + self.query_seconds - time.monotonic()
        if left > self.continue_wait:
            await asyncio.sleep(self.continue_wait)
            return self._express(200, {"error": "Continue wait"})
        if left > 0:
            await asyncio.sleep(left)
        if endpoint == "dry-run":
            return self._express(200, {"queryType": "regularQuery", "normalizedQueries": [query], "queryOrder": [],
                                       "pivotQuery": query})  # fmt: skip
        return self._express(
            200,
            {
                "queryType": "regularQuery",
                "results": [
                    {
                        "query": query,
                        "lastRefreshTime": "2026-11-30T12:00:00.000Z",
                        "annotation": {"measures": {}, "dimensions": {}, "segments": {}, "timeDimensions": {}},
                        "dataSource": "default",
                        "dbType": "postgres",
                        "extDbType": "cubestore",
                        "external": False,
                        "slowQuery": False,
                        "total": None,
                        "data": self.rows,
                    }
                ],
                "pivotQuery": {**query, "queryType": "regularQuery"},
                "slowQuery": False,
            },
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.database_up:
            return self._express(200, {"health": "HEALTH"})
        return self._express(500, {"health": "DOWN"})

    async def _no_such_route(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="<!DOCTYPE html><pre>Cannot GET /cubejs-api/v1/readyz</pre>",
                            content_type="text/html")  # fmt: skip

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cubejs-api/v1/readyz", self._no_such_route)
        app.router.add_route("*", "/cubejs-api/v1/{endpoint}", self._api)
        app.router.add_get("/readyz", self._readyz)
        return app
