"""Shared fixtures: the fake GitLab, the fake Cube, and the proxy in front of them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.lane import listener as fast_lane
from proxy.lane.listener import FastLane
from proxy.settings import Settings, settings_from_mapping
from proxy.web.app import create_app
from proxy.web.keys import PIPELINE
from proxy.web.runner import ProxyRunner
from tests.fakes.cube import FakeCube
from tests.fakes.gitlab import FakeGitLab
from tests.support.redis_server import RedisServer

#: markers set by directory: every test under tests/<directory>/ has them
DIRECTORY_MARKERS = {"stack": ("stack",)}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by directory (``DIRECTORY_MARKERS``), and ``serial`` on every ``loop_timing`` test: a test that judges
    time runs in the serial pass, alone on the machine (``make test``)."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        for marker in DIRECTORY_MARKERS.get(parts[0], ()) if len(parts) > 1 else ():
            item.add_marker(marker)
        if item.get_closest_marker("loop_timing") is not None:
            item.add_marker("serial")


CUBE_KEY = "test-cube-api-key-of-at-least-32-bytes!!"
REPORTER = {"PRIVATE-TOKEN": "glpat-reporter-0000000001"}
MAINTAINER = {"PRIVATE-TOKEN": "glpat-maint-000000000004"}
QUERY = {"measures": ["TrackedEvents.count"]}
#: the shared layer's signing key in tests
SIGNING_KEY = "a-signing-key-of-at-least-32-bytes-0123456789"

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def gitlab() -> FakeGitLab:
    return FakeGitLab()


@pytest.fixture
def cube() -> FakeCube:
    return FakeCube(CUBE_KEY)


@pytest.fixture
async def gitlab_url(gitlab: FakeGitLab, aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(gitlab.app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def cube_url(cube: FakeCube, aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(cube.app())
    return str(server.make_url(cube.prefix)).rstrip("/")


@pytest.fixture
async def collector(aiohttp_server: ServerFactory) -> Any:
    """A real OTLP/HTTP traces receiver (``tests/support/otlp_receiver.py``), listening; its ``url`` is the traces
    endpoint. Imported here: the protobuf classes load only where traces are tested."""
    from tests.support.otlp_receiver import Receiver

    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    receiver.url = str(server.make_url("/v1/traces"))
    return receiver


@pytest.fixture
def make_settings(gitlab_url: str, cube_url: str) -> Callable[..., Settings]:
    def make(**sections: dict[str, Any]) -> Settings:
        raw: dict[str, Any] = {
            "gitlab": {"url": gitlab_url},
            "product_analytics": {"cube_api_base_url": cube_url, "cube_api_key": CUBE_KEY},
            "cube": {"continue_wait_budget": 5.0, "continue_wait_pause": 0.01, "readiness_ttl": 0.0},
            "limits": {"rate_limit": 0.0},
        }
        for name, values in sections.items():
            raw[name] = {**raw.get(name, {}), **values}
        return settings_from_mapping(raw, {})

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class ProxyTestServer(TestServer):
    """The app as aiohttp serves it in production: through ``ProxyRunner`` (our answer for unparseable requests)."""

    async def _make_runner(self, **kwargs: Any) -> ProxyRunner:
        return ProxyRunner(self.app, **kwargs)


class FastLaneTestServer(ProxyTestServer):
    """The app behind the fast lane, as ``python -m proxy`` serves it: aiohttp's server takes what it hands over."""

    lane: FastLane
    listener: asyncio.AbstractServer

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        self.listener, self.lane = await fast_lane.listen(self.app[PIPELINE], self.runner, self.host, 0)
        self.port = self.listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.started and not self.closed:
            self.listener.close()
            await self.lane.shutdown(self.app[PIPELINE].settings.server.shutdown_timeout)
        await super().close()


#: every test that talks to the proxy over HTTP runs twice: served by aiohttp alone, and through the fast lane
SERVINGS = ("aiohttp", "fast_lane")


@pytest.fixture(params=SERVINGS)
def serving(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_client(
    aiohttp_client: ClientFactory, serving: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[Settings], Awaitable[TestClient[web.Request, web.Application]]]]:
    """Clients of the app served ``serving``'s way (on ``host``: loopback unless a test needs a stranger's address);
    through the lane, the test must prove the lane served.

    A test run through the fast lane fails unless the lane served at least one of its
    requests, so a test meant for the lane cannot pass through aiohttp alone unnoticed. A
    test whose every request is one the lane hands to aiohttp (meta, health, a query
    string...) says so with ``@pytest.mark.handed_over``, and then the lane must serve none.
    """
    lanes: list[FastLane] = []

    async def make(settings: Settings, host: str = "127.0.0.1") -> TestClient[web.Request, web.Application]:
        app = create_app(settings)
        if serving == "fast_lane":
            server = FastLaneTestServer(app, host=host)
            test_client = await aiohttp_client(server)
            lanes.append(server.lane)
            return test_client
        return await aiohttp_client(ProxyTestServer(app, host=host))

    yield make
    if serving == "fast_lane" and lanes:
        served = sum(lane.served for lane in lanes)
        if request.node.get_closest_marker("handed_over") is not None:
            assert served == 0, f"marked handed_over, but the fast lane served {served} of this test's requests"
        else:
            assert served > 0, (
                "this test ran through the fast lane, but the lane served none of its requests:"
                " mark it @pytest.mark.handed_over if aiohttp-only shapes are what it tests"
            )


@pytest.fixture
async def client(
    settings: Settings, make_client: Callable[[Settings], Awaitable[TestClient[web.Request, web.Application]]]
) -> TestClient[web.Request, web.Application]:
    return await make_client(settings)


@pytest.fixture(scope="session")
def worker_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Debian redis-server per test process (each pytest-xdist worker has its own), on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(worker_redis: RedisServer) -> Iterator[RedisServer]:
    """The worker's Redis as if new: running, empty, its statistics reset, no client of an earlier test connected.

    A test that needs a Redis of another shape (TLS, a password, a memory limit) starts its own ``RedisServer``;
    one that stops this one has it started again (on the same port) when it ends.
    """
    fresh(worker_redis)
    yield worker_redis
    if not worker_redis.answers():
        worker_redis.start()


def fresh(server: RedisServer) -> None:
    """Empty ``server`` and reset what it counts, as a new one would be."""
    if not server.answers():
        server.start()
    with server.connect() as conn:
        conn.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        conn.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        conn.flushall()
        conn.script_flush()
        conn.config_resetstat()
        conn.slowlog_reset()


@pytest.fixture
def shared_settings(settings: Settings, redis_server: RedisServer) -> Settings:
    """The proxy with the fleet's shared layer on ``redis_server``.

    Redis' timeout is generous here: on a loaded machine a 0.25 s call can time out, the layer goes
    degraded and a test of what the fleet shares would see local answers instead. Tests of the
    timeout set their own.
    """
    return replace(settings, "redis", url=redis_server.url, signing_key=SIGNING_KEY, local_ttl=60.0, timeout=5.0)


def replace(settings: Settings, section: str, **values: Any) -> Settings:
    return dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **values)})


@pytest.fixture
def access_lines(caplog, capsys) -> Callable[[], list[dict[str, Any]]]:
    """The access log on, and a reader of the lines it has written so far (to stderr, as JSON)."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        for line in capsys.readouterr().err.splitlines():
            if line.startswith("{") and '"logger":"proxy.access"' in line:
                seen.append(orjson.loads(line))
        return seen

    return read
