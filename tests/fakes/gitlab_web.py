"""The parts of GitLab's web UI a browser test needs: sign-in, sign-out, and an analytics dashboard page.

The dashboard page is GitLab's in miniature: a ``csrf-token`` meta tag (a masked token of
the signed-in session, as Rails renders it) and GitLab's client code, ``@cubejs-client/core``'s
browser build from ``stack/client``'s lock, configured as GitLab's ``cube_analytics.js``
configures it. It renders what ``meta()`` and ``load()`` answered, for the test to read.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

from tests.fakes.gitlab import SESSION_COOKIE, FakeGitLab

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "stack" / "client" / "node_modules"
HERE = Path(__file__).resolve().parent / "gitlab_web"
#: the browser builds the dashboard page loads, in order (each a package's own UMD file, from the lock)
SCRIPTS = {
    "dayjs.min.js": NODE_MODULES / "dayjs" / "dayjs.min.js",
    "dayjs-quarterOfYear.js": NODE_MODULES / "dayjs" / "plugin" / "quarterOfYear.js",
    "dayjs-duration.js": NODE_MODULES / "dayjs" / "plugin" / "duration.js",
    "dayjs-isoWeek.js": NODE_MODULES / "dayjs" / "plugin" / "isoWeek.js",
    "dayjs-en.js": NODE_MODULES / "dayjs" / "locale" / "en.js",
    "ramda.min.js": NODE_MODULES / "ramda" / "dist" / "ramda.min.js",
    "cube-globals.js": HERE / "cube-globals.js",
    "cubejs-client-core.umd.js": NODE_MODULES / "@cubejs-client" / "core" / "dist" / "cubejs-client-core.umd.js",
    "dashboard.js": HERE / "dashboard.js",
}

SIGN_IN = """<!doctype html><html><head><title>Sign in · GitLab</title></head><body>
<form method="post" action="/users/sign_in">
<input type="hidden" name="redirect_to" value="{redirect}">
<label>Username <input name="user[login]" id="user_login"></label>
<label>Password <input type="password" name="user[password]" id="user_password"></label>
<button type="submit" data-testid="sign-in-button">Sign in</button>
</form></body></html>"""

DASHBOARD = """<!doctype html><html><head><title>Analytics dashboards · {path} · GitLab</title>
<meta name="csrf-param" content="authenticity_token">
<meta name="csrf-token" content="{csrf}">
</head><body data-project-id="{project_id}">
<h1>Analytics dashboards</h1>
<p id="status">loading</p>
<p>Progress callbacks: <span id="progress">0</span></p>
<ul id="cubes"></ul>
<table id="days"><thead><tr><th>Day</th><th>Events</th></tr></thead><tbody></tbody></table>
{scripts}
</body></html>"""


def web_ui_routes(gitlab: FakeGitLab, password: str = "password") -> list[web.RouteDef]:  # noqa: S107 - a fake's
    """Routes for the fake GitLab's ``extra_routes``: the pages a signed-in browser sees."""

    async def sign_in_page(request: web.Request) -> web.Response:
        redirect = html.escape(request.query.get("redirect_to", "/"))
        return web.Response(text=SIGN_IN.format(redirect=redirect), content_type="text/html")

    async def sign_in(request: web.Request) -> web.Response:
        form = await request.post()
        user = next((u for u in gitlab.users.values() if u.username == form.get("user[login]")), None)
        if user is None or form.get("user[password]") != password:
            raise web.HTTPFound("/users/sign_in")
        target = str(form.get("redirect_to") or "/")
        response = web.HTTPFound(target if target.startswith("/") and not target.startswith("//") else "/")
        # GitLab's session cookie: HttpOnly, the browser's default SameSite (Lax)
        response.set_cookie(SESSION_COOKIE, gitlab.sign_in(user.id), path="/", httponly=True)
        raise response

    async def sign_out(request: web.Request) -> web.Response:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        session = gitlab.sessions.get(session_id)
        form = await request.post()
        if session is None or not gitlab._csrf_valid(session, str(form.get("authenticity_token", ""))):
            return web.Response(status=422, text="Can't verify CSRF token authenticity.")
        gitlab.sign_out(session_id)
        response = web.HTTPFound("/users/sign_in")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def dashboard(request: web.Request) -> web.Response:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        session = gitlab.sessions.get(session_id)
        if session is None or not session.signed_in:
            raise web.HTTPFound(f"/users/sign_in?redirect_to={request.path}")
        path = request.match_info["path"]
        project = next((p for p in gitlab.projects.values() if p.path == path), None)
        if project is None or session.user_id not in project.members:
            raise web.HTTPNotFound()
        scripts = "\n".join(f'<script src="/assets/{name}"></script>' for name in SCRIPTS)
        page = DASHBOARD.format(
            path=html.escape(path), csrf=gitlab.csrf_token(session_id), project_id=project.id, scripts=scripts
        )
        return web.Response(text=page, content_type="text/html")

    async def home(request: web.Request) -> web.Response:
        """GitLab's home page for a signed-in user: like every GitLab page, it carries the session's CSRF token."""
        session_id = request.cookies.get(SESSION_COOKIE, "")
        session = gitlab.sessions.get(session_id)
        if session is None or not session.signed_in:
            raise web.HTTPFound("/users/sign_in")
        csrf = gitlab.csrf_token(session_id)
        page = f'<!doctype html><html><head><meta name="csrf-token" content="{csrf}"></head><body>Home</body></html>'
        return web.Response(text=page, content_type="text/html")

    async def asset(request: web.Request) -> web.FileResponse:
        found = SCRIPTS.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.FileResponse(found, headers={"Content-Type": "text/javascript"})

    return [
        web.get("/users/sign_in", sign_in_page),
        web.post("/users/sign_in", sign_in),
        web.post("/users/sign_out", sign_out),
        web.get("/", home),
        web.get("/assets/{name}", asset),
        web.get("/{path:.+}/-/analytics/dashboards", dashboard),
    ]
