"""A lean HTTP/1.1 keep-alive client for Cube: asyncio protocols, llhttp (httptools), one pool per origin.

It does only what the proxy needs of Cube: ``GET``/``POST`` with a small body, answers by
``Content-Length``, chunked or close-delimited, read with backpressure, bounded waits, and
connections kept alive and reused. Why not aiohttp's ``ClientSession``: ``bench/NOTES.md``.
Every answer must be released (``async with response:`` or ``Response.release``).
"""

from __future__ import annotations

import ssl as ssl_module

import yarl

from proxy.http_client.pool import HttpPool, Origin
from proxy.http_client.response import Response


class HttpClient:
    """One pool per Cube origin, made on first use; the call's URL picks the pool."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float,
        pool_timeout: float = 10.0,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._pools: dict[Origin, HttpPool] = {}
        #: URL -> (pool, request line prefix); the URLs are the configured Cubes' endpoints.
        self._targets: dict[str, tuple[HttpPool, bytes]] = {}
        #: for https Cubes: the system's trusted CAs unless given (made on first use)
        self._ssl = ssl_context

    def _target(self, url: str) -> tuple[HttpPool, bytes]:
        found = self._targets.get(url)
        if found is None:
            parsed = yarl.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.port is None:
                raise ValueError(f"not an http(s) URL: {url!r}")
            origin = Origin(parsed.scheme, parsed.host, parsed.port)
            pool = self._pools.get(origin)
            if pool is None:
                if origin.scheme == "https" and self._ssl is None:
                    self._ssl = ssl_module.create_default_context()
                pool = self._pools[origin] = HttpPool(
                    origin,
                    limit=self._limit,
                    connect_timeout=self._connect_timeout,
                    pool_timeout=self._pool_timeout,
                    ssl_context=self._ssl,
                )
            target = parsed.raw_path_qs or "/"
            found = self._targets[url] = (pool, f"{target} HTTP/1.1\r\nHost: {origin.host_header}\r\n".encode())
        return found

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        read_timeout: float,
    ) -> Response:
        pool, target = self._target(url)
        lines = [method.encode(), b" ", target]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        return await pool.request(b"".join(lines), body, read_timeout)

    def pools(self) -> list[HttpPool]:
        return list(self._pools.values())

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
