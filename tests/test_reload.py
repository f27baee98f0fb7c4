"""SIGHUP: the settings read again; a valid change replaces the workers under traffic without one failed request,
an invalid one is refused with every problem logged, and the proxy goes on as it was."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.fakes.cube import FakeCube
from tests.support.processes import proxy_process
from tests.support.waiting import Lines, eventually
from tests.support.wire import LOAD


class Traffic:
    """Callers on fresh connections (each a new accept) and on one kept-alive connection, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _caller(self, fresh: bool) -> None:
        connector = aiohttp.TCPConnector(force_close=fresh)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not self._stop.is_set():
                try:
                    async with session.post(self.url, json={"query": QUERY}, headers=REPORTER) as resp:
                        await resp.read()
                        self.statuses.append(resp.status)
                except (aiohttp.ClientError, OSError) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def start(self, fresh: int = 3, kept: int = 1) -> None:
        self._tasks = [asyncio.ensure_future(self._caller(True)) for _ in range(fresh)]
        self._tasks += [asyncio.ensure_future(self._caller(False)) for _ in range(kept)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.mark.parametrize(("workers", "grown"), [(1, 2), (2, 2), (2, 1)])
async def test_sighup_replaces_the_workers_under_traffic_without_a_failed_request(
    cube, gitlab_url, cube_url, tmp_path, aiohttp_server, workers, grown
):
    other = FakeCube(CUBE_KEY)
    other_url = str((await aiohttp_server(other.app())).make_url("")).rstrip("/")
    server = f"workers = {workers}"
    unlimited = f"{server}\n[limits]\nrate_limit = 0.0"  # the callers here are one token, as fast as they can
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=unlimited) as (proc, port):
        config = tmp_path / "proxy.toml"
        lines = Lines(proc.stderr)
        traffic = Traffic(f"http://127.0.0.1:{port}{LOAD}")
        traffic.start()
        try:
            await eventually(lambda: len(cube.calls) >= 20, "calls reaching the first Cube")
            # a valid change: another Cube, and more, as many or fewer workers; replaced while the callers go on
            changed = config.read_text().replace(cube_url, other_url).replace(server, f"workers = {grown}")
            config.write_text(changed)
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: lines.having("reloaded:"), "the reload's line")
            assert f"{grown} new worker(s) listening, {workers} old one(s) draining" in lines.having("reloaded:")[0]
            await eventually(lambda: len(other.calls) >= 20, "calls reaching the new Cube")
            before = len(cube.calls)
            # an invalid change: refused, each problem said, the proxy goes on with what it has
            valid = config.read_text()
            config.write_text(valid.replace("[cube]\n", "[cube]\nread_timeout = -1\nnonsense = 1\n"))
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: lines.having("goes on with the settings it has"), "the refusal's last line")
            refused = "".join(lines.having("reload refused"))
            served = len(other.calls)
            await eventually(lambda: len(other.calls) >= served + 20, "calls going on after a refused reload")
        finally:
            await traffic.stop()
        assert traffic.failures == [] and set(traffic.statuses) == {200}
        assert len(cube.calls) == before  # the old workers drained: none of them asked the first Cube since
        assert "[cube] read_timeout" in refused and "[cube] nonsense" in refused
        assert len(lines.having("reloaded:")) == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await lines.close()
