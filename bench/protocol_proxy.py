"""What a proxy outside aiohttp's server would cost: an asyncio protocol server, same Cube client.

``python -m bench.protocol_proxy PORT UPSTREAM_URL``: requests are parsed with httptools
(llhttp) in a bare ``asyncio.Protocol`` on uvloop, and each POST is forwarded through the
proxy's own Cube client (``proxy.http_client.HttpClient``) in a task, its answer returned
whole. No auth, no JWT, no limits, no error mapping: it is a reference, not a product.
The benchmark runs it beside the real proxy so the report shows, in the same run, what
leaving aiohttp's server for a hand-written one would give (bench/NOTES.md).
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

from proxy.http_client import HttpClient

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class Forwarding(asyncio.Protocol):
    def __init__(self, client: HttpClient, upstream: str) -> None:
        self._client = client
        self._upstream = upstream
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        body, self._body = b"".join(self._body), []
        if self._parser.get_method() != b"POST":
            self._transport.write(OK)
            return
        asyncio.get_running_loop().create_task(self._forward(body))

    async def _forward(self, body: bytes) -> None:
        headers = {"Authorization": "x", "Content-Type": "application/json"}
        response = await self._client.request("POST", self._upstream, headers, body, 10.0)
        answer = await response.read()
        response.release()
        assert self._transport is not None
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)
        self._transport.write(head + answer)


async def serve(port: int, upstream: str) -> None:
    client = HttpClient(limit=256, connect_timeout=5.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Forwarding(client, upstream), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))


if __name__ == "__main__":
    main()
