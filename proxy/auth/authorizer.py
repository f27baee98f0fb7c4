"""Who may call: the caller's identity, token scopes, project and role, asked of GitLab (spec section 2)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.auth.credentials import Credential, credential_error
from proxy.auth.gitlab import GitLabClient, GitLabReply, refusal
from proxy.caching.singleflight import SharedLoads, SingleFlightCache
from proxy.errors import (
    ApiError,
    access_denied,
    insufficient_scope,
    not_enabled,
    project_not_found,
    unauthorized,
    unavailable,
)
from proxy.ids import project_id
from proxy.limits.caller_rate import RateLimiter
from proxy.observe.metrics import Metrics
from proxy.observe.tracing import Traced
from proxy.settings import GitLabSettings
from proxy.shared.codecs import CallerCodec, JsonCodec

_USER_GID = "gid://gitlab/User/"
_FULL_PATH = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_.][A-Za-z0-9_.+-]*)+")


@dataclass(frozen=True)
class Caller:
    user_id: int
    username: str
    is_admin: bool
    scopes: frozenset[str]


@dataclass(frozen=True)
class Grant:
    """A caller's permission to use one project's analytics."""

    caller: Caller
    project_id: int


class Authorizer(Protocol):
    """Who may do what; ``trace`` (with ``[tracing]``) is the span GitLab's calls are traced under."""

    async def authorize(
        self, credential: Credential, project_ref: str, method: str, trace: Traced | None = None
    ) -> Grant: ...

    async def identify(self, credential: Credential, trace: Traced | None = None) -> Caller: ...

    async def mint_token(self, credential: Credential, grant: Grant, trace: Traced | None = None) -> str: ...

    def expire(self) -> None:
        """Drop every expired answer now (called by the pipeline's sweep)."""


#: remembered grants looked at per sweep at most (the sweep stops at the first one still good)
SWEEP_GRANTS = 1000
_READ_SCOPES = frozenset({"api", "read_api"})
#: a session carries no scopes: it may do what its user may do
_SESSION_SCOPES = _READ_SCOPES
_WRITE_SCOPES = frozenset({"api"})


def required_scope(method: str) -> tuple[str, frozenset[str]]:
    """The scope a method needs, and the scopes that satisfy it (GitLab lets read_api do GET only)."""
    if method in {"GET", "HEAD"}:
        return "read_api", _READ_SCOPES
    return "api", _WRITE_SCOPES


def csrf_key_needed(credential: Credential, needed: str) -> str | None:
    """The key of the session's CSRF verdict when the request needs one (a session's non-GET), else None.

    Raises 401 for a session's non-GET request that sent no CSRF token: GitLab is not asked.
    """
    if credential.scheme != "session" or needed != "api":
        return None
    if credential.csrf_key is None:
        raise unauthorized()
    return credential.csrf_key


def check_project_ref(project_ref: str) -> str:
    """A numeric id or a full path; anything else is a 404 without asking anyone."""
    if project_id(project_ref) is not None:
        return project_ref
    if len(project_ref) <= 1024 and _FULL_PATH.fullmatch(project_ref):
        return project_ref
    raise project_not_found()


class GitLabAuthorizer:
    """Asks GitLab, caching each answer by token hash with one in-flight call per key.

    A grant worked out from cached answers is kept too, until the first of those answers
    expires: a warm request is one dictionary lookup, and a revoked token still stops
    working within ``cache_ttl``.
    """

    def __init__(
        self,
        client: GitLabClient,
        settings: GitLabSettings,
        timer: Callable[[], float] = time.monotonic,
        *,
        metrics: Metrics,
    ) -> None:
        self._client = client
        #: authorisations answered from the cached grant (hit) or worked out (miss); new-credential refusals
        self._metrics = metrics
        self._min_level = settings.min_access_level
        self._timer = timer

        def cache() -> SingleFlightCache[Any, Any]:
            return SingleFlightCache(
                settings.cache_size,
                settings.cache_ttl,
                settings.negative_cache_ttl,
                cache_error=_cacheable,
                timer=timer,
            )

        # keyed by the token's hash: the caller; the project id per project ref; the level per project id;
        # a session's CSRF verdict (the user GitLab's GraphQL named) by the hash of session and CSRF token
        self._callers: SingleFlightCache[str, Caller] = cache()
        self._csrf: SingleFlightCache[str, int] = cache()
        self._projects: SingleFlightCache[tuple[str, str], int] = cache()
        self._members: SingleFlightCache[tuple[str, int], int] = cache()
        #: (token hash, CSRF verdict key, project ref, scope needed) -> the grant, and when its first answer expires
        self._grants: dict[tuple[str, str | None, str, str], tuple[Grant, float]] = {}
        self._grants_size = settings.cache_size
        #: one bucket for every credential GitLab has not been asked about yet: a flood of random
        #: tokens costs GitLab at most this rate (and burst), and the callers it knows go on
        self._new_credentials = RateLimiter(settings.new_credentials_per_second, settings.new_credentials_burst, 1)

    async def authorize(
        self, credential: Credential, project_ref: str, method: str, trace: Traced | None = None
    ) -> Grant:
        needed, satisfying = required_scope(method)
        csrf_key = csrf_key_needed(credential, needed) if credential.scheme == "session" else None
        memo_key = (credential.key, csrf_key, project_ref, needed)
        memo = self._grants.get(memo_key)
        if memo is not None:
            if self._timer() < memo[1]:
                self._metrics.auth_hits += 1
                if trace is not None:
                    trace.set("proxy.auth.cached", True)
                return memo[0]
            del self._grants[memo_key]
        self._metrics.auth_misses += 1
        if trace is not None:
            trace.set("proxy.auth.cached", False)
        grant = await self._ask_gitlab(credential, check_project_ref(project_ref), needed, satisfying, csrf_key, trace)
        self._remember(memo_key, grant)
        return grant

    async def _ask_gitlab(
        self,
        credential: Credential,
        project_ref: str,
        needed: str,
        satisfying: frozenset[str],
        csrf_key: str | None,
        trace: Traced | None,
    ) -> Grant:
        key = credential.key
        caller, _ = await self._callers.get(key, lambda: self._load_caller(credential, trace))
        if not caller.scopes & satisfying:
            raise insufficient_scope(needed)
        if csrf_key is not None:
            csrf_user, _ = await self._csrf.get(csrf_key, lambda: self._load_csrf_verdict(credential, trace))
            if csrf_user != caller.user_id:
                raise unauthorized()
        project_id, _ = await self._projects.get(
            (key, project_ref), lambda: self._load_project(credential, project_ref, trace)
        )
        if not caller.is_admin:
            user_id = caller.user_id
            level, _ = await self._members.get(
                (key, project_id), lambda: self._load_member(credential, project_id, user_id, trace)
            )
            if level < self._min_level:
                raise access_denied()
        return Grant(caller, project_id)

    def share(self, shared: SharedLoads, local_ttl: float) -> None:
        """GitLab's answers through the fleet's shared layer: one GitLab call per answer for the whole fleet."""
        as_json = JsonCodec()
        self._callers.share(shared, "callers", CallerCodec(Caller), local_ttl)
        self._projects.share(shared, "projects", as_json, local_ttl)
        self._members.share(shared, "members", as_json, local_ttl)
        self._csrf.share(shared, "csrf", as_json, local_ttl)

    async def identify(self, credential: Credential, trace: Traced | None = None) -> Caller:
        """Who the credential belongs to (GitLab's answer, cached as for authorisations); 401 if nobody."""
        caller, _ = await self._callers.get(credential.key, lambda: self._load_caller(credential, trace))
        return caller

    def expire(self) -> None:
        """Expired GitLab answers and refusals dropped; the oldest remembered grants pruned while expired."""
        for cache in (self._callers, self._csrf, self._projects, self._members):
            cache.expire()
        now, grants = self._timer(), self._grants
        for key in list(itertools.islice(grants, SWEEP_GRANTS)):  # oldest first, a bounded number per sweep
            if grants[key][1] > now:
                break
            del grants[key]

    def _remember(self, memo_key: tuple[str, str | None, str, str], grant: Grant) -> None:
        key, csrf_key, project_ref, _ = memo_key
        entries = [self._callers.peek(key), self._projects.peek((key, project_ref))]
        if csrf_key is not None:
            entries.append(self._csrf.peek(csrf_key))
        if not grant.caller.is_admin:
            entries.append(self._members.peek((key, grant.project_id)))
        expiries = [entry[1] for entry in entries if entry is not None]
        if len(expiries) < len(entries):
            return  # an answer was not cached (cache_ttl = 0): nothing to remember
        if len(self._grants) >= self._grants_size:
            del self._grants[next(iter(self._grants))]  # the oldest
        self._grants[memo_key] = (grant, min(expiries))

    async def mint_token(self, credential: Credential, grant: Grant, trace: Traced | None = None) -> str:
        reply = await self._client.create_project_access_token(credential, grant.project_id, dt.date.today(), trace)
        token = reply.body.get("token") if isinstance(reply.body, dict) else None
        if reply.status in {200, 201} and isinstance(token, str):
            return token
        if reply.status < 400:
            raise ApiError(502, {"message": "GitLab created no project access token"})
        raise refusal(reply, f"GitLab refused to create a project access token ({reply.status})")

    def _spend_new_credential(self) -> None:
        """A credential nobody in the fleet knows is about to cost GitLab a call: within the budget, or 503.

        Spent here, where GitLab is asked, and nowhere else: a caller found in this process's
        cache, in the fleet's, or in a load already under way costs none of it.
        """
        if not self._new_credentials.enabled:
            return
        wait = self._new_credentials.check("new", self._timer())
        if wait is not None:
            self._metrics.refusal("new_credentials")
            raise unavailable("Too many new credentials at once; retry shortly", wait)

    async def _load_caller(self, credential: Credential, trace: Traced | None) -> Caller:
        self._spend_new_credential()
        user = await self._client.current_user(credential, trace)
        if user.status != 200 or not isinstance(user.body, dict):
            raise unauthorized()
        body = user.body
        if body.get("state", "active") != "active" or not isinstance(body.get("id"), int):
            raise unauthorized()
        scopes = _SESSION_SCOPES if credential.scheme == "session" else await self._load_scopes(credential, trace)
        return Caller(body["id"], str(body.get("username", "")), body.get("is_admin") is True, scopes)

    async def _load_csrf_verdict(self, credential: Credential, trace: Traced | None) -> int:
        """The user id GitLab's GraphQL names for the session with this CSRF token; 401 when it names none."""
        reply = await self._client.csrf_verdict(credential, trace)
        body = reply.body
        data = body.get("data") if reply.status == 200 and isinstance(body, dict) else None
        user = data.get("currentUser") if isinstance(data, dict) else None
        gid = user.get("id") if isinstance(user, dict) else None
        if isinstance(gid, str) and gid.startswith(_USER_GID):
            number = gid[len(_USER_GID) :]
            if number.isascii() and number.isdigit():
                return int(number)
        raise unauthorized()

    async def _load_scopes(self, credential: Credential, trace: Traced | None) -> frozenset[str]:
        info = await self._client.personal_token_info(credential, trace)
        if info.status == 200 and isinstance(info.body, dict):
            return _token_scopes(info)
        if 400 <= info.status < 500:
            oauth = await self._client.oauth_token_info(credential, trace)
            if oauth.status == 200 and isinstance(oauth.body, dict):
                scope = oauth.body.get("scope", oauth.body.get("scopes"))
                if isinstance(scope, str):
                    scope = scope.split()
                if isinstance(scope, list):
                    return frozenset(s for s in scope if isinstance(s, str))
                return frozenset()
        raise unauthorized()

    async def _load_project(self, credential: Credential, project_ref: str, trace: Traced | None) -> int:
        reply = await self._client.project(credential, project_ref, trace)
        if reply.status == 401:
            raise unauthorized()
        if reply.status != 200 or not isinstance(reply.body, dict) or not isinstance(reply.body.get("id"), int):
            raise project_not_found()
        namespace = reply.body.get("namespace")
        if isinstance(namespace, dict) and namespace.get("kind") == "user":
            raise not_enabled()
        project_id: int = reply.body["id"]
        return project_id

    async def _load_member(self, credential: Credential, project_id: int, user_id: int, trace: Traced | None) -> int:
        reply = await self._client.member(credential, project_id, user_id, trace)
        if reply.status == 401:
            raise unauthorized()
        body = reply.body
        if reply.status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_level"), int):
            raise access_denied()  # 404: no membership at all
        if body.get("state", "active") != "active":
            raise access_denied()  # e.g. "awaiting": a membership not yet approved
        level: int = body["access_level"]
        return level


def _token_scopes(info: GitLabReply) -> frozenset[str]:
    body = info.body
    assert isinstance(body, dict)
    if body.get("active") is False or body.get("revoked") is True:
        raise unauthorized()
    expires = body.get("expires_at")
    if isinstance(expires, str):
        try:
            if dt.date.fromisoformat(expires[:10]) < dt.date.today():
                raise unauthorized()
        except ValueError:
            raise unauthorized() from None
    scopes = body.get("scopes", [])
    return frozenset(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else frozenset()


def _cacheable(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and credential_error(exc)
