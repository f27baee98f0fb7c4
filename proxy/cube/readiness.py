"""Whether each configured Cube is ready: probed over a pool of its own, remembered for a second.

Rules it keeps: the probe never competes with analytics calls for the Cube pool (it has
its own few connections), and however many callers ask, each Cube is probed at most once
per ``ttl`` (``[cube] readiness_ttl``; one probe in flight, shared), so the unauthenticated
readiness route cannot be used to make the proxy hammer Cube.
"""

from __future__ import annotations

import asyncio
import functools

from proxy.caching.singleflight import SingleFlightCache
from proxy.http_client import HttpClient, UpstreamError
from proxy.settings import Settings

#: seconds one probe may take
READY_TIMEOUT = 2.0
#: connections the probes keep per Cube
PROBE_CONNECTIONS = 2


def cube_urls(settings: Settings) -> list[str]:
    """Every configured Cube's base URL, once each."""
    urls = {settings.product_analytics.cube_api_base_url}
    urls.update(p.cube_api_base_url for p in settings.projects.values())
    return sorted(u.rstrip("/") for u in urls if u)


class CubeReadiness:
    def __init__(self, urls: list[str], ttl: float, timeout: float = READY_TIMEOUT) -> None:
        self.urls = urls
        self._timeout = timeout
        self._http = HttpClient(limit=PROBE_CONNECTIONS, connect_timeout=timeout, pool_timeout=timeout)
        self._answers: SingleFlightCache[str, bool] = SingleFlightCache(max(1, len(urls)), ttl)
        #: what the last check found, by URL (the metrics' ``cube_up``)
        self.last: dict[str, bool] = {}

    async def check(self) -> dict[str, bool]:
        """Each Cube's URL and whether it answered ``/readyz`` with 200 (at most ``ttl`` s ago)."""
        results = await asyncio.gather(
            *(self._answers.get(url, functools.partial(self._probe, url)) for url in self.urls)
        )
        found = {url: ready for url, (ready, _) in zip(self.urls, results, strict=True)}
        self.last = found
        return found

    async def _probe(self, url: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                async with await self._http.request("GET", f"{url}/readyz", {}, None, self._timeout) as response:
                    await response.read()
                    return response.status == 200
        except (TimeoutError, UpstreamError, ValueError):
            return False

    async def close(self) -> None:
        await self._http.close()
