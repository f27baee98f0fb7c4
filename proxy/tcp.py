"""TCP details shared by the inbound lane and the outbound client."""

from __future__ import annotations

import asyncio
import socket
from typing import cast


def as_stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A new TCP connection's transport, with Nagle's algorithm off (answers go out as written)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
