"""The outbound HTTP/1.1 client towards Cube: connection, response, pool and client, each in its own module."""

from proxy.http_client.client import HttpClient
from proxy.http_client.connection import Connection, State
from proxy.http_client.errors import (
    BadAnswer,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    PoolBusy,
    ReadTimeout,
    UpstreamError,
)
from proxy.http_client.pool import HttpPool, Origin
from proxy.http_client.response import HIGH_WATER, Response

__all__ = [
    "HIGH_WATER",
    "BadAnswer",
    "ConnectFailed",
    "ConnectTimeout",
    "Connection",
    "Disconnected",
    "HttpClient",
    "HttpPool",
    "Origin",
    "PoolBusy",
    "ReadTimeout",
    "Response",
    "State",
    "UpstreamError",
]
