"""The answer cache's tests' helpers: a clock moved by hand, answers counting rows, a load through the cache."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.web.keys import PIPELINE
from tests.conftest import QUERY, REPORTER
from tests.fakes.cube import load_answer
from tests.support.wire import LOAD_OF


class Clock:
    """Wall-clock seconds the test moves by hand (the cache's ``clock``)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def clocked(client) -> Clock:
    clock = Clock()
    client.app[PIPELINE].services.cached_queries.cache.clock = clock
    return clock


def counted_rows(n: int):
    """Cube answering the load with a count that goes up by one per call (so a test sees which answer it got)."""
    calls = [0]

    async def behaviour(call, request):
        calls[0] += 1
        return web.json_response(load_answer(call.body["query"], [{"TrackedEvents.count": str(n + calls[0])}]))

    return behaviour


def count_of(body: bytes) -> str:
    return orjson.loads(body)["results"][0]["data"][0]["TrackedEvents.count"]


async def load(client, query=QUERY, project=1, headers=REPORTER, **extra):
    resp = await client.post(LOAD_OF.format(project), json={"query": query, **extra}, headers=headers)
    return resp, await resp.read()
