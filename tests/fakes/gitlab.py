"""A small fake of the GitLab REST endpoints the spec names, answering as GitLab's API docs say.

Tokens, users, projects and memberships are plain data a test can change; every
call is counted so tests can prove what GitLab was (or was not) asked.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import itertools
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web


@dataclass
class FakeToken:
    user_id: int
    scopes: list[str]
    kind: str = "pat"  # "pat" (personal/project/group access token) or "oauth"
    active: bool = True
    revoked: bool = False
    expires_at: str | None = None


@dataclass
class FakeUser:
    id: int
    username: str
    state: str = "active"
    is_admin: bool = False


@dataclass
class FakeProject:
    id: int
    path: str
    namespace_kind: str = "group"
    visibility: str = "private"
    members: dict[int, int] = field(default_factory=dict)  # user id -> access level
    awaiting: set[int] = field(default_factory=set)  # memberships not yet approved


@dataclass
class FakeSession:
    """A signed-in browser session, as GitLab's session store holds it: its user and its CSRF secret."""

    user_id: int
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    signed_in: bool = True


SESSION_COOKIE = "_gitlab_session"


class FakeGitLab:
    def __init__(self) -> None:
        self.users: dict[int, FakeUser] = {
            1: FakeUser(1, "alice"),
            2: FakeUser(2, "guest-gary"),
            3: FakeUser(3, "root", is_admin=True),
            4: FakeUser(4, "maintainer-mo"),
            5: FakeUser(5, "blocked-bo", state="blocked"),
            6: FakeUser(6, "developer-dee"),
        }
        self.tokens: dict[str, FakeToken] = {
            "glpat-reporter-0000000001": FakeToken(1, ["api"]),
            "glpat-readapi-0000000001": FakeToken(1, ["read_api"]),
            "glpat-readuser-000000001": FakeToken(1, ["read_user"]),
            "glpat-guest-000000000002": FakeToken(2, ["api"]),
            "glpat-admin-000000000003": FakeToken(3, ["api"]),
            "glpat-maint-000000000004": FakeToken(4, ["api"]),
            "glpat-blocked-0000000005": FakeToken(5, ["api"]),
            "glpat-dev-00000000000006": FakeToken(6, ["api"]),
            "glpat-revoked-0000000001": FakeToken(1, ["api"], revoked=True, active=False),
            "glpat-expired-0000000001": FakeToken(1, ["api"], active=False, expires_at="2020-01-01"),
            "oauth-reporter-000000001": FakeToken(1, ["api"], kind="oauth"),
            "oauth-readapi-0000000001": FakeToken(1, ["read_api"], kind="oauth"),
        }
        self.projects: dict[int, FakeProject] = {
            1: FakeProject(1, "group/alpha", members={1: 20, 2: 10, 4: 40, 6: 30}),
            2: FakeProject(2, "group/sub/beta", members={1: 30, 4: 40}),
            3: FakeProject(3, "alice/personal", namespace_kind="user", members={1: 50}),
            5: FakeProject(5, "group/public", visibility="public", members={4: 40}),
        }
        self.calls: Counter[str] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self.created_tokens: list[dict[str, Any]] = []
        #: when set, every call answers this status (a GitLab outage).
        self.fail_with: int | None = None
        #: when set, every call waits for this event first (a GitLab slower than the proxy's timeout)
        self.hold: asyncio.Event | None = None
        #: answer with a session cookie, as GitLab may
        self.set_cookies = False
        #: current GitLab answers 400 to /personal_access_tokens/self for OAuth tokens; older ones 401 or 404.
        self.oauth_self_status = 400
        self._minted = itertools.count(1)
        #: browser sessions by cookie value (GitLab's session store)
        self.sessions: dict[str, FakeSession] = {}
        #: extra routes a test adds (pages of GitLab's web UI, say) before ``app()``
        self.extra_routes: list[web.RouteDef] = []

    # -- sessions, as GitLab's web UI makes them -----------------------------------
    def sign_in(self, user_id: int) -> str:
        """A new signed-in session for a user; its cookie value."""
        session_id = secrets.token_hex(16)
        self.sessions[session_id] = FakeSession(user_id)
        return session_id

    def sign_out(self, session_id: str) -> None:
        self.sessions[session_id].signed_in = False

    def csrf_token(self, session_id: str) -> str:
        """A CSRF token for the session as Rails renders one in a page: masked with a fresh one-time pad."""
        real = self.sessions[session_id].csrf_secret
        pad = secrets.token_bytes(32)
        return base64.urlsafe_b64encode(pad + bytes(a ^ b for a, b in zip(pad, real, strict=True))).decode()

    def _csrf_valid(self, session: FakeSession, given: str | None) -> bool:
        """Rails' ``valid_authenticity_token?``: the masked or the raw form of the session's own token."""
        if not given:
            return False
        try:
            raw = base64.urlsafe_b64decode(given.encode() + b"=" * (-len(given) % 4))
        except (ValueError, TypeError):
            return False
        if len(raw) == 64:
            raw = bytes(a ^ b for a, b in zip(raw[:32], raw[32:], strict=True))
        return len(raw) == 32 and hmac.compare_digest(raw, session.csrf_secret)

    def _session(self, request: web.Request) -> FakeSession | None:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        return session if session is not None and session.signed_in else None

    def _session_user(self, request: web.Request, csrf_checked: bool) -> int | None:
        """The session's user, as GitLab's API finds it (warden): any method but GET/HEAD needs the CSRF token."""
        session = self._session(request)
        if session is None:
            return None
        if csrf_checked and not self._csrf_valid(session, request.headers.get("X-CSRF-Token")):
            return None
        return session.user_id

    # -- helpers -------------------------------------------------------------------
    def _token(self, request: web.Request) -> FakeToken | None:
        """The caller's token, or (with no token) its session as a token with every scope, as GitLab's API does."""
        raw = request.headers.get("PRIVATE-TOKEN")
        if raw is None:
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                raw = auth[len("Bearer ") :]
        if raw is None:
            user_id = self._session_user(request, csrf_checked=request.method not in {"GET", "HEAD"})
            return None if user_id is None else FakeToken(user_id, ["api"], kind="session")
        token = self.tokens.get(raw)
        if token is None or not token.active or token.revoked:
            return None
        return token

    def _project(self, ref: str) -> FakeProject | None:
        ref = unquote(ref)
        if ref.isdigit():
            return self.projects.get(int(ref))
        return next((p for p in self.projects.values() if p.path == ref), None)

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"message": "401 Unauthorized"}, status=401)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        self.calls[route.canonical if route else request.path] += 1
        self.seen_headers.append(dict(request.headers))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_with is not None:
            return web.json_response({"message": "boom"}, status=self.fail_with)
        response: web.StreamResponse = await handler(request)
        if self.set_cookies:
            response.set_cookie("_gitlab_session", f"session-for-{request.headers.get('PRIVATE-TOKEN', 'bearer')}")
        return response

    # -- endpoints -----------------------------------------------------------------
    async def user(self, request: web.Request) -> web.Response:
        token = self._token(request)
        if token is None:
            return self._unauthorized()
        user = self.users[token.user_id]
        if user.state != "active":
            return web.json_response({"message": "403 Forbidden - Your account has been blocked."}, status=403)
        body: dict[str, Any] = {"id": user.id, "username": user.username, "state": user.state, "name": user.username}
        if user.is_admin:
            body["is_admin"] = True  # GitLab includes is_admin only for admins
        return web.json_response(body)

    async def token_self(self, request: web.Request) -> web.Response:
        raw_token = self._token(request)
        if raw_token is None:
            return self._unauthorized()
        if raw_token.kind == "session":
            return web.json_response({"message": "404 Not Found"}, status=404)
        if raw_token.kind == "oauth":
            return web.json_response(
                {"message": "400 Bad request - not a personal access token"}, status=self.oauth_self_status
            )
        return web.json_response(
            {
                "id": 99,
                "name": "token",
                "revoked": raw_token.revoked,
                "active": raw_token.active,
                "scopes": raw_token.scopes,
                "user_id": raw_token.user_id,
                "expires_at": raw_token.expires_at,
                "created_at": "2026-01-01T00:00:00.000Z",
            }
        )

    async def oauth_info(self, request: web.Request) -> web.Response:
        token = self._token(request)
        if token is None or token.kind != "oauth":
            return web.json_response(
                {"error": "invalid_token", "error_description": "The access token is invalid"}, status=401
            )
        return web.json_response(
            {
                "resource_owner_id": token.user_id,
                "scope": token.scopes,
                "scopes": token.scopes,
                "expires_in": 7200,
                "application": {"uid": "app"},
                "created_at": 1700000000,
            }
        )

    def _visible(self, project: FakeProject, token: FakeToken) -> bool:
        user = self.users[token.user_id]
        return project.visibility == "public" or user.is_admin or token.user_id in project.members

    def _caller_and_project(self, request: web.Request) -> tuple[FakeToken, FakeProject] | web.Response:
        """The caller's token and the route's project, or GitLab's 401/404 answer."""
        token = self._token(request)
        if token is None:
            return self._unauthorized()
        project = self._project(request.match_info["id"])
        if project is None or not self._visible(project, token):
            return web.json_response({"message": "404 Project Not Found"}, status=404)
        return token, project

    async def project(self, request: web.Request) -> web.Response:
        found = self._caller_and_project(request)
        if isinstance(found, web.Response):
            return found
        _, project = found
        namespace = project.path.rsplit("/", 1)[0]
        return web.json_response(
            {
                "id": project.id,
                "path_with_namespace": project.path,
                "visibility": project.visibility,
                "namespace": {"id": 10, "full_path": namespace, "kind": project.namespace_kind},
            }
        )

    async def member(self, request: web.Request) -> web.Response:
        found = self._caller_and_project(request)
        if isinstance(found, web.Response):
            return found
        _, project = found
        user_id = int(request.match_info["user_id"])
        level = project.members.get(user_id)
        if level is None:
            return web.json_response({"message": "404 Not found"}, status=404)
        return web.json_response(
            {
                "id": user_id,
                "username": self.users[user_id].username,
                "access_level": level,
                "state": "awaiting" if user_id in project.awaiting else "active",
            }
        )

    async def create_access_token(self, request: web.Request) -> web.Response:
        found = self._caller_and_project(request)
        if isinstance(found, web.Response):
            return found
        token, project = found
        if token.scopes != ["api"] and "api" not in token.scopes:
            return web.json_response({"error": "insufficient_scope"}, status=403)
        if project.members.get(token.user_id, 0) < 40:
            return web.json_response(
                {"message": "User does not have permission to create project access token"}, status=400
            )
        body = await request.json()
        expires = dt.date.fromisoformat(body["expires_at"])
        if expires <= dt.date.today():
            return web.json_response({"message": "expires_at must be in the future"}, status=400)
        self.created_tokens.append(body)
        minted = f"glpat-minted-{next(self._minted):012d}"
        return web.json_response(
            {
                "id": 1000,
                "name": body["name"],
                "scopes": body["scopes"],
                "access_level": body["access_level"],
                "expires_at": body["expires_at"],
                "active": True,
                "revoked": False,
                "token": minted,
            },
            status=201,
        )

    async def graphql(self, request: web.Request) -> web.Response:
        """``{ currentUser { id } }`` only: a token's user, or the session's when its CSRF token fits, else null.

        GitLab's GraphqlController has ``protect_from_forgery with: :null_session``: a wrong or
        missing CSRF token does not fail the request, it forgets the session.
        """
        body = await request.json()
        if body.get("query", "").replace(" ", "") != "{currentUser{id}}":
            return web.json_response({"errors": [{"message": "this fake answers currentUser only"}]})
        has_token = "PRIVATE-TOKEN" in request.headers or request.headers.get("Authorization", "").startswith("Bearer ")
        if has_token:
            token = self._token(request)
            if token is None:
                return web.json_response({"errors": [{"message": "Invalid token"}]}, status=401)
            user_id: int | None = token.user_id
        else:
            user_id = self._session_user(request, csrf_checked=True)
        current = None if user_id is None else {"id": f"gid://gitlab/User/{user_id}"}
        return web.json_response({"data": {"currentUser": current}})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_routes(self.extra_routes)
        app.router.add_post("/api/graphql", self.graphql)
        app.router.add_get("/api/v4/user", self.user)
        app.router.add_get("/api/v4/personal_access_tokens/self", self.token_self)
        app.router.add_get("/oauth/token/info", self.oauth_info)
        app.router.add_get("/api/v4/projects/{id}", self.project)
        app.router.add_get("/api/v4/projects/{id}/members/all/{user_id}", self.member)
        app.router.add_post("/api/v4/projects/{id}/access_tokens", self.create_access_token)
        return app
