"""``[server] metrics_host``: the metrics port open to a scraper outside the host, the status page still not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp.test_utils import make_mocked_request

from proxy.settings import settings_from_mapping
from proxy.web.app import create_app
from proxy.web.keys import EXCHANGE, PIPELINE
from proxy.web.observability import OBSERVE, _status_allowed
from tests.support.processes import free_port, proxy_process


class Transport:
    """What a socket tells about itself: its own address and its peer's."""

    def __init__(self, sockname: tuple[str, int], peer: str) -> None:
        self._extra = {"sockname": sockname, "peername": (peer, 40000)}

    def get_extra_info(self, name: str, default=None):
        return self._extra.get(name, default)


def listening_on(port: int) -> set[str]:
    """The local addresses listening on ``port``, from the kernel's table (hex address:port)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


async def test_the_metrics_port_listens_where_metrics_host_says(cube, gitlab_url, cube_url, tmp_path):
    metrics_port = free_port()
    section = f'metrics_port = {metrics_port}\nmetrics_host = "0.0.0.0"'
    async with proxy_process(tmp_path, gitlab_url, cube_url, server_section=section) as (proc, _):
        assert listening_on(metrics_port) == {"0.0.0.0"}
        url = f"http://127.0.0.1:{metrics_port}/-/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200 and "pa_proxy_requests_total" in await resp.text()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_the_status_page_on_an_open_metrics_port_answers_loopback_callers_only(gitlab_url, cube_url):
    settings = settings_from_mapping(
        {
            "server": {"metrics_port": 9464, "metrics_host": "0.0.0.0"},
            "gitlab": {"url": gitlab_url},
            "product_analytics": {"cube_api_base_url": cube_url, "cube_api_key": "k" * 40},
        },
        {},
    )
    app = create_app(settings)

    async def allowed(peer: str) -> bool:
        request = make_mocked_request("GET", "/-/status", app=app, transport=Transport(("0.0.0.0", 9464), peer))
        request[EXCHANGE] = app[PIPELINE].begin("GET", "/-/status", request.headers, request.remote)
        return await _status_allowed(request, app[OBSERVE])

    assert await allowed("127.0.0.1") is True
    assert await allowed("10.1.2.3") is False  # a pod in the cluster may scrape, not read the status page
