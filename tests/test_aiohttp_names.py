"""aiohttp's private names the proxy relies on, pinned: an aiohttp that renamed or dropped one fails here, loudly,
instead of the proxy going subtly wrong (``docs/architecture.md``: what the proxy takes from aiohttp)."""

from __future__ import annotations

import inspect

from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.web_protocol import RequestHandler

from proxy.head_rules import SINGLETONS, server_limits
from proxy.web.middlewares import ANALYTICS_PREFIX, OPEN_ROUTES
from proxy.web.runner import ProxyRunner, unparsed_body


def test_the_runner_hook_the_proxy_overrides_is_still_there():
    """``ProxyRunner._make_server`` wraps aiohttp's: the server aiohttp makes, with our request handler class."""
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert ProxyRunner._make_server is not web.AppRunner._make_server


def test_a_handlers_request_count_is_still_a_slot():
    """The lane closes a handed-over connection that never got a request by reading ``_request_count``."""
    assert "_request_count" in RequestHandler.__slots__


def test_the_singleton_headers_and_the_server_options_are_aiohttps():
    assert {"host", "content-length", "content-type"} <= {str(name).lower() for name in SINGLETON_HEADERS}
    assert {b"host", b"content-length"} <= SINGLETONS
    accepted = inspect.signature(RequestHandler.__init__).parameters
    assert set(server_limits()) <= set(accepted)  # auto_decompress among them: aiohttp inflates nothing for us


def test_a_status_the_standard_does_not_name_is_a_bad_request():
    assert unparsed_body(400)["message"].startswith("400 Bad Request")
    assert unparsed_body(499)["message"].startswith("499 Bad Request")


async def test_a_route_needs_a_credential_unless_it_opts_out_by_name(make_settings, aiohttp_client):
    """Routes need a credential by default (a route added without a name, or under a new one, goes through the
    gate: fail closed); only the named open routes do not."""
    from proxy.web.app import create_app

    app = create_app(make_settings())
    names = {route.name for route in app.router.routes() if route.name}
    assert names >= OPEN_ROUTES  # every opt-out names a route that exists
    assert all(name.startswith(ANALYTICS_PREFIX) for name in names - OPEN_ROUTES)

    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    app.router.add_get("/-/new-unnamed", secret)
    app.router.add_get("/-/new-named", secret, name="something.new")
    client = await aiohttp_client(app)
    for path in ("/-/new-unnamed", "/-/new-named"):
        resp = await client.get(path)
        assert resp.status == 401, path
    assert (await client.get("/-/liveness")).status == 200
    assert (await client.get("/-/nowhere")).status == 404  # no route: aiohttp's 404, no credential asked
