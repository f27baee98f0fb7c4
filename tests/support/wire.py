"""Requests and answers on the wire: the routes' paths, a streamed answer's head and tail, an answer read off a
socket."""

from __future__ import annotations

import asyncio

HEAD = b'{"queryType":"regularQuery","results":[{"data":['


TAIL = b'{"TrackedEvents.count":"1"}]}]}'


LOAD_ROUTE = "/api/v4/projects/{project}/product_analytics/request/load"
#: a load's path for any project (``LOAD_OF.format(project)``), and project 1's
LOAD_OF = "/api/v4/projects/{}/product_analytics/request/load"
LOAD = LOAD_OF.format(1)


async def read_answer(reader: asyncio.StreamReader) -> CubeAnswer:
    """One HTTP/1.1 answer, framed by Content-Length or chunks (a ``100 Continue`` before it is skipped)."""
    while True:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        if status != 100:
            break
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return CubeAnswer(status, headers, body)


class CubeAnswer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
