"""Why a call to Cube failed: one exception class per failure, each message safe to show a caller."""

from __future__ import annotations


class UpstreamError(Exception):
    """Why a call to Cube failed; the message is safe to show a caller."""


class ConnectFailed(UpstreamError):
    pass


class ConnectTimeout(UpstreamError):
    pass


class ReadTimeout(UpstreamError):
    pass


class Disconnected(UpstreamError):
    pass


class BadAnswer(UpstreamError):
    pass


class PoolBusy(UpstreamError):
    """Every connection to the origin stayed busy for as long as a caller may wait for one."""
