"""The query explorer page: a person picks a project, builds a query, and runs it through the proxy's own API.

The page (``GET /-/explorer``, a Jinja2 template with autoescape) and its script, style and
chart library (vendored Chart.js, with its licence) are served from the package; the script
calls the analytics routes as any caller would (a pasted token as ``PRIVATE-TOKEN``, or
GitLab's session on GitLab's origin). Every answer is strict: a Content-Security-Policy with
no inline script and no other origin, and everything Cube says is shown as text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from proxy import __version__
from proxy.pipeline.routes import API_PREFIX
from proxy.settings import Settings

EXPLORER_PATH = "/-/explorer"
STATIC = Path(__file__).resolve().parent / "static"
#: the files the page loads, by name, and their types: nothing else is served (no path is ever joined)
ASSETS = {
    "explorer.js": "text/javascript",
    "explorer.css": "text/css",
    "vendor/chart.umd.min.js": "text/javascript",
    "vendor/chart.js.LICENSE.md": "text/plain",
}
#: scripts, styles and calls from this origin only; no inline script or style, no frames, no forms, no plugins
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _page(settings: Settings) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    context = {
        "version": __version__,
        "api_root": API_PREFIX,
        "sessions": settings.gitlab.sessions,
        "csrf_page": settings.server.explorer_csrf_page,
        "static": f"{EXPLORER_PATH}/static",
    }

    async def explorer_page(request: web.Request) -> web.StreamResponse:
        response = aiohttp_jinja2.render_template("explorer.html.j2", request, context)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-store"
        return response

    return explorer_page


async def explorer_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    headers = {**SECURITY_HEADERS, "Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache"}
    return web.FileResponse(STATIC / name, headers=headers)


def setup_templates(app: web.Application) -> None:
    """The pages' Jinja2 templates (``proxy/web/templates/``), with autoescape always on."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def setup_explorer(app: web.Application, settings: Settings) -> None:
    """The explorer's routes, when ``[server] explorer`` is on."""
    if not settings.server.explorer:
        return
    app.router.add_get(EXPLORER_PATH, _page(settings), name="explorer.page")
    app.router.add_get(EXPLORER_PATH + "/static/{name:.+}", explorer_asset, name="explorer.static")
