"""aiohttp's runner and server with one change: a request aiohttp cannot parse gets our own short answer.

aiohttp answers an unparseable request (a line over its limit, a control character, an
obsolete line folding, a bad method...) itself, before any application code runs, with a
text body quoting the parser's message, and that message quotes the offending bytes: a
session cookie, an overlong CSRF header or a ``private_token`` URL could come back to
whoever can read the answer. ``QuietRequestHandler`` answers those with a JSON body that
says what to fix and never repeats a byte of the request; the logging stays aiohttp's
(through the redaction guard). Both front doors use it: aiohttp's listener directly, and
the fast lane for every connection it hands over (``ProxyServer`` makes the handlers).

``ProxyRunner`` is ``web.AppRunner`` whose ``_make_server`` (the hook aiohttp's runners
implement) returns a ``ProxyServer`` over the same application handler, with the request
head's limits of ``proxy/head_rules.py`` (the fast lane hands over whatever passes them),
counting its open connections in the pipeline's record of this door.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import INTERNAL_ERROR
from proxy.head_rules import server_limits
from proxy.pipeline.door_counts import DoorCounts
from proxy.web.keys import PIPELINE

#: the runner's own options, which its server and connections do not take
_RUNNER_ONLY = ("shutdown_timeout", "handle_signals")


def unparsed_body(status: int) -> dict[str, str]:
    """What a caller is told of a request the server answered before the application saw it."""
    if status >= 500:
        return dict(INTERNAL_ERROR)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # not a status the standard names
        phrase = "Bad Request"
    message = (
        f"{status} {phrase}: the request could not be read as HTTP/1.1 (check the request line, the header"
        " names and values, their length, and the body's framing)"
    )
    return {"message": message, "error": message}


class QuietRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering errors it raises itself without echoing the request."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, None)  # aiohttp's log line, and its check that nothing was sent
        response = web.Response(
            status=status, body=orjson.dumps(unparsed_body(status)), content_type="application/json"
        )
        response.force_close()
        return response


class ProxyServer(web.Server):
    """``web.Server`` whose connections are ``QuietRequestHandler``s."""

    def __init__(self, handler: Any, counts: DoorCounts, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k not in {"request_factory", "handler_cancellation", "loop"}}
        super().__init__(handler, **kwargs)
        self._handler_options = options
        self._counts = counts

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._counts.open = len(self.connections)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._counts.open = len(self.connections)

    def __call__(self) -> web.RequestHandler:
        return QuietRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_options)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` serving through a ``ProxyServer``."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._server_options = server_limits() | {k: v for k, v in kwargs.items() if k not in _RUNNER_ONLY}

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the application started and frozen, as aiohttp does it
        counts = self.app[PIPELINE].services.aiohttp_counts
        return ProxyServer(made.request_handler, counts, request_factory=made.request_factory, **self._server_options)
