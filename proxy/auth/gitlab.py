"""A small client for the GitLab REST endpoints the spec names."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from proxy.auth.credentials import Credential
from proxy.bounded import read_at_most
from proxy.errors import ApiError, gitlab_unavailable
from proxy.observe.metrics import Metrics
from proxy.observe.tracing import CLIENT, Traced
from proxy.settings import GitLabSettings

log = logging.getLogger(__name__)

#: The answers the proxy reads from GitLab are a few KB of JSON; one larger than this is not
#: GitLab's (a misconfigured URL, or a hostile peer), and is not read into memory.
MAX_ANSWER_BYTES = 1024 * 1024
_CURRENT_USER = {"query": "{ currentUser { id } }"}


@dataclass(frozen=True)
class GitLabReply:
    status: int
    body: Any


@contextlib.asynccontextmanager
async def gitlab_client(config: GitLabSettings, metrics: Metrics) -> AsyncIterator[GitLabClient]:
    """A client for GitLab's REST API over one session for this process, closed on the way out."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.max_concurrent_calls, ttl_dns_cache=300),
        cookie_jar=aiohttp.DummyCookieJar(),  # callers share this session: GitLab's cookies must not
    )
    try:
        yield GitLabClient(session, config.url, config.timeout, config.retry_after, metrics=metrics)
    finally:
        await session.close()


class GitLabClient:
    """Calls GitLab with the caller's own credential; fails closed with 503 on any fault."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        timeout: float,
        retry_after: int,
        *,
        metrics: Metrics,
    ) -> None:
        self._session = session
        #: each call counted by endpoint and status, and timed
        self._metrics = metrics
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_after = retry_after

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        credential: Credential,
        json: Any = None,
        with_csrf: bool = False,
        *,
        template: str,
        trace: Traced | None,
    ) -> GitLabReply:
        """One call, counted by endpoint and outcome: GitLab's status code (its 5xx and 429 as such), or
        ``unreachable`` when no answer came (a connection error or the timeout). Traced under ``trace`` as a client
        span named by ``template`` (the path with its ids as names), which GitLab is sent as ``traceparent``."""
        started = time.monotonic()
        outcome = "unreachable"
        span = None
        if trace is not None:
            attributes = {"http.request.method": method, "url.template": template, "gitlab.endpoint": endpoint}
            span = trace.child(f"{method} {template}", CLIENT, attributes)
        try:
            status, raw = await self._round_trip(
                method, path, credential, json, with_csrf, span.traceparent if span is not None else None
            )
            outcome = str(status)
            return self._reply(path, status, raw)
        finally:
            self._metrics.gitlab_call(endpoint, outcome, time.monotonic() - started)
            if span is not None:
                if outcome == "unreachable":
                    span.fail("unreachable", "GitLab did not answer")
                else:
                    span.set("http.response.status_code", int(outcome))
                    if int(outcome) >= 400:
                        span.fail(outcome)
                span.end()

    async def _round_trip(
        self, method: str, path: str, credential: Credential, json: Any, with_csrf: bool, traceparent: str | None
    ) -> tuple[int, bytes | None]:
        """GitLab's status and body (None when larger than ``MAX_ANSWER_BYTES``); 503 when it did not answer."""
        headers = credential.gitlab_headers(with_csrf)
        if traceparent is not None:
            headers["traceparent"] = traceparent
        try:
            async with self._session.request(
                method,
                f"{self._base}{path}",
                headers=headers,
                json=json,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                return resp.status, await read_at_most(resp.content_length, resp.content.iter_any(), MAX_ANSWER_BYTES)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "GitLab did not answer",
                extra={"event": "gitlab_unreachable", "path": path.split("?")[0], "error": type(exc).__name__},
            )
            raise gitlab_unavailable(self._retry_after) from None

    def _reply(self, path: str, status: int, raw: bytes | None) -> GitLabReply:
        """GitLab's answer as data; 503 for one the proxy cannot use (oversized, a redirect, a 5xx, a 429)."""
        where = path.split("?")[0]
        if raw is None:
            log.error(
                "GitLab's answer is larger than %d bytes: check [gitlab] url",
                MAX_ANSWER_BYTES,
                extra={"event": "gitlab_error", "path": where, "status": status},
            )
            raise gitlab_unavailable(self._retry_after)
        if 300 <= status < 400:
            log.error(
                "GitLab answered a redirect (%s): check [gitlab] url",
                status,
                extra={"event": "gitlab_redirect", "path": where, "status": status},
            )
            raise gitlab_unavailable(self._retry_after)
        if status >= 500 or status == 429:
            log.warning("GitLab answered %s", status, extra={"event": "gitlab_error", "path": where, "status": status})
            raise gitlab_unavailable(self._retry_after)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            if status < 300:
                raise gitlab_unavailable(self._retry_after) from None
            body = None
        return GitLabReply(status, body)

    async def reachable(self) -> bool:
        """Whether GitLab answers at all (any HTTP answer below 500 from ``/-/liveness``), for readiness."""
        try:
            async with self._session.get(
                f"{self._base}/-/liveness", timeout=self._timeout, allow_redirects=False
            ) as resp:
                return resp.status < 500
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def current_user(self, credential: Credential, trace: Traced | None = None) -> GitLabReply:
        path = "/api/v4/user"
        return await self._call("user", "GET", path, credential, template=path, trace=trace)

    async def personal_token_info(self, credential: Credential, trace: Traced | None = None) -> GitLabReply:
        path = "/api/v4/personal_access_tokens/self"
        return await self._call("token_self", "GET", path, credential, template=path, trace=trace)

    async def oauth_token_info(self, credential: Credential, trace: Traced | None = None) -> GitLabReply:
        path = "/oauth/token/info"
        return await self._call("oauth_token_info", "GET", path, credential, template=path, trace=trace)

    async def csrf_verdict(self, credential: Credential, trace: Traced | None = None) -> GitLabReply:
        """GraphQL's ``currentUser`` with the session and its CSRF token: null unless the token fits the session.

        GitLab's GraphQL controller forgets the session on a wrong CSRF token
        (``protect_from_forgery with: :null_session``), so this is how a proxy without
        GitLab's secrets learns whether a CSRF token is valid (spec section 2.1).
        """
        path = "/api/graphql"
        return await self._call(
            "graphql", "POST", path, credential, json=_CURRENT_USER, with_csrf=True, template=path, trace=trace
        )

    async def project(self, credential: Credential, project_ref: str, trace: Traced | None = None) -> GitLabReply:
        path = f"/api/v4/projects/{quote(project_ref, safe='')}"
        return await self._call("project", "GET", path, credential, template="/api/v4/projects/{id}", trace=trace)

    async def member(
        self, credential: Credential, project_id: int, user_id: int, trace: Traced | None = None
    ) -> GitLabReply:
        path = f"/api/v4/projects/{project_id}/members/all/{user_id}"
        template = "/api/v4/projects/{id}/members/all/{user_id}"
        return await self._call("member", "GET", path, credential, template=template, trace=trace)

    async def create_project_access_token(
        self, credential: Credential, project_id: int, today: dt.date, trace: Traced | None = None
    ) -> GitLabReply:
        body = {
            "name": f"product-analytics-{today.isoformat()}",
            "scopes": ["read_api"],
            "access_level": 20,
            "expires_at": (today + dt.timedelta(days=1)).isoformat(),
        }
        path = f"/api/v4/projects/{project_id}/access_tokens"
        template = "/api/v4/projects/{id}/access_tokens"
        return await self._call(
            "access_tokens", "POST", path, credential, json=body, with_csrf=True, template=template, trace=trace
        )


def message_of(reply: GitLabReply, fallback: str) -> str:
    """GitLab's error text (``message`` or ``error``), flattened to one string."""
    body = reply.body
    if isinstance(body, dict):
        for key in ("message", "error"):
            value = body.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, (dict, list)):
                return orjson.dumps(value).decode()
    return fallback


def refusal(reply: GitLabReply, fallback: str) -> ApiError:
    return ApiError(reply.status, {"message": message_of(reply, fallback)})
