"""A scriptable fake of Cube's ``/cubejs-api/v1`` for unit tests.

It checks the JWT as Cube does (HS256 with the tenant's key, 403 otherwise),
records every call, and answers by default as Cube 0.33 does. A test can swap
in a behaviour that answers slowly, in chunks, with errors, with Continue wait,
or dies mid-body. Synchronisation is by ``asyncio.Event``, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from multidict import CIMultiDict


@dataclass
class CubeCall:
    endpoint: str
    method: str
    headers: CIMultiDict[str]
    body: Any
    claims: dict[str, Any]
    prefix: str


Behaviour = Callable[[CubeCall, web.Request], Awaitable[web.StreamResponse]]


def load_answer(query: dict[str, Any], data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "queryType": "regularQuery",
        "results": [
            {
                "query": query,
                "lastRefreshTime": "2026-11-26T10:00:00.000Z",
                "annotation": {"measures": {}, "dimensions": {}, "segments": {}, "timeDimensions": {}},
                "dataSource": "default",
                "dbType": "postgres",
                "slowQuery": False,
                "total": None,
                "data": data,
            }
        ],
        "pivotQuery": query,
        "slowQuery": False,
    }


@dataclass
class FakeCube:
    secret: str
    #: path prefix the fake serves under ("" or e.g. "/tenant-a").
    prefix: str = ""
    calls: list[CubeCall] = field(default_factory=list)
    behaviour: Behaviour | None = None
    rows: list[dict[str, Any]] = field(default_factory=lambda: [{"TrackedEvents.count": "5"}])
    ready: bool = True
    readyz_calls: int = 0
    #: set whenever a call arrives, so a test can wait for the upstream side.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def calls_to(self, endpoint: str) -> list[CubeCall]:
        return [c for c in self.calls if c.endpoint == endpoint]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        raw = await request.read()
        body: Any = None
        if raw:
            body = await request.json()
        token = request.headers.get("Authorization", "")
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return web.json_response({"error": "Invalid token"}, status=403)
        call = CubeCall(endpoint, request.method, CIMultiDict(request.headers), body, claims, self.prefix)
        self.calls.append(call)
        self.arrived.set()
        if self.behaviour is not None:
            return await self.behaviour(call, request)
        return await self.default(call, request)

    async def default(self, call: CubeCall, request: web.Request) -> web.StreamResponse:
        if call.endpoint == "meta":
            return web.json_response(
                {
                    "cubes": [
                        {
                            "name": "TrackedEvents",
                            "title": f"Tracked events of {call.claims['appId']}",
                            "measures": [{"name": "TrackedEvents.count", "type": "number"}],
                            "dimensions": [{"name": "TrackedEvents.eventName", "type": "string"}],
                            "segments": [],
                        }
                    ]
                }
            )
        query = call.body["query"]
        if call.endpoint == "dry-run":
            return web.json_response(
                {"queryType": "regularQuery", "normalizedQueries": [query], "queryOrder": [], "pivotQuery": query}
            )
        return web.json_response(load_answer(query, self.rows))

    async def _readyz(self, request: web.Request) -> web.Response:
        self.readyz_calls += 1
        if self.ready:
            return web.json_response({"health": "HEALTH"})
        return web.json_response({"health": "DOWN"}, status=500)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", self.prefix + "/cubejs-api/v1/{endpoint}", self._handle)
        app.router.add_get(self.prefix + "/readyz", self._readyz)
        return app


# -- behaviours -------------------------------------------------------------------------


def answer(status: int, body: Any) -> Behaviour:
    async def behaviour(call: CubeCall, request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return behaviour


def raw_answer(status: int, body: bytes, content_type: str = "application/json") -> Behaviour:
    async def behaviour(call: CubeCall, request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return behaviour


def continue_wait_then(remaining: list[int], final: Behaviour | None = None) -> Behaviour:
    """CubeAnswer Continue wait ``remaining[0]`` times, then data."""

    async def behaviour(call: CubeCall, request: web.Request) -> web.StreamResponse:
        if remaining[0] > 0:
            remaining[0] -= 1
            return web.json_response({"error": "Continue wait"})
        if final is not None:
            return await final(call, request)
        return web.json_response(load_answer(call.body["query"], [{"TrackedEvents.count": "42"}]))

    return behaviour


def held_until(event: asyncio.Event, then: Behaviour | None = None) -> Behaviour:
    """Hold every call until ``event`` is set (a slow Cube)."""

    async def behaviour(call: CubeCall, request: web.Request) -> web.StreamResponse:
        await event.wait()
        if then is not None:
            return await then(call, request)
        return web.json_response(load_answer(call.body["query"] if call.body else {}, [{"TrackedEvents.count": "1"}]))

    return behaviour


def chunked(
    chunks: list[bytes], between: asyncio.Event | None = None, die_after: int | None = None, length: bool = True
) -> Behaviour:
    """Send ``chunks`` one by one (waiting for ``between`` after the first); optionally die mid-body.

    With ``length=False`` the answer has no Content-Length, so it goes out in chunked framing.
    """

    async def behaviour(call: CubeCall, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        if length:
            response.content_length = sum(len(c) for c in chunks)
        await response.prepare(request)
        for index, chunk in enumerate(chunks):
            if die_after is not None and index == die_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(chunk)
            if index == 0 and between is not None:
                await between.wait()
        await response.write_eof()
        return response

    return behaviour


def generated(total_bytes: int, chunk_size: int = 64 * 1024) -> Behaviour:
    """A large, valid JSON answer generated on the fly (never held whole in memory)."""
    head = b'{"queryType":"regularQuery","results":[{"data":['
    tail = b"]}]}"
    row = b'{"TrackedEvents.count":"1"},'
    rows_per_chunk = max(1, chunk_size // len(row))
    body_chunk = row * rows_per_chunk
    n_chunks = max(1, (total_bytes - len(head) - len(tail)) // len(body_chunk))
    last = body_chunk[:-1]  # no trailing comma

    async def behaviour(call: CubeCall, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.content_length = len(head) + len(body_chunk) * (n_chunks - 1) + len(last) + len(tail)
        await response.prepare(request)
        await response.write(head)
        for _ in range(n_chunks - 1):
            await response.write(body_chunk)
        await response.write(last + tail)
        await response.write_eof()
        return response

    return behaviour
