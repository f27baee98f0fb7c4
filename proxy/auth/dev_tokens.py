"""An auth backend for a local stack without GitLab: tokens read from a TOML file.

Selected by ``[auth] backend = "dev_tokens"``; settings refuse it on a
non-loopback listen address unless ``allow_dev_tokens_off_loopback`` is set.
"""

from __future__ import annotations

import hmac
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.auth.authorizer import Caller, Grant, check_project_ref, required_scope
from proxy.auth.credentials import Credential
from proxy.errors import access_denied, insufficient_scope, project_not_found, unauthorized
from proxy.ids import project_id
from proxy.observe.tracing import Traced
from proxy.settings import SettingsError

ROLE_LEVELS = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}


@dataclass(frozen=True)
class DevToken:
    token: str = field(repr=False)
    caller: Caller
    #: project id -> access level
    roles: Mapping[int, int]


@dataclass(frozen=True)
class DevTokens:
    tokens: tuple[DevToken, ...]
    #: full path -> project id
    paths: Mapping[str, int]


def _level(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ROLE_LEVELS:
        return ROLE_LEVELS[value.lower()]
    problems.append(f"{where}: a role is one of {', '.join(ROLE_LEVELS)} or a number, not {value!r}")
    return 0


def parse_dev_tokens(raw: Mapping[str, Any], source: str) -> DevTokens:
    problems: list[str] = []
    paths: dict[str, int] = {}
    for key, project in dict(raw.get("projects", {})).items():
        if project_id(str(key)) is None or not isinstance(project, dict) or not isinstance(project.get("path"), str):
            problems.append(f'{source} [projects.{key}]: needs a numeric id and a path = "group/project"')
            continue
        paths[project["path"]] = int(key)
    tokens: list[DevToken] = []
    for token, entry in dict(raw.get("tokens", {})).items():
        where = f"{source} [tokens.<{len(tokens) + 1}>]"
        if not isinstance(entry, dict) or len(token) < 16:
            problems.append(
                f"{where}: a token of 16 or more characters with a table of user_id, username, scopes, roles"
            )
            continue
        user_id, scopes, roles = entry.get("user_id"), entry.get("scopes", ["api"]), entry.get("roles", {})
        if not isinstance(user_id, int) or not isinstance(scopes, list) or not isinstance(roles, dict):
            problems.append(f"{where}: user_id must be a number, scopes a list and roles a table")
            continue
        levels = {}
        for project_key, role in roles.items():
            if project_id(str(project_key)) is None:
                problems.append(f"{where}: roles are keyed by numeric project id, not {project_key!r}")
                continue
            levels[int(project_key)] = _level(role, where, problems)
        caller = Caller(
            user_id,
            str(entry.get("username", f"user{user_id}")),
            entry.get("admin") is True,
            frozenset(map(str, scopes)),
        )
        tokens.append(DevToken(token, caller, levels))
    if problems:
        raise SettingsError(problems)
    return DevTokens(tuple(tokens), paths)


def load_dev_tokens(path: str) -> DevTokens:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError([f"[auth] dev_tokens_file {path}: cannot be read ({exc})"]) from exc
    return parse_dev_tokens(raw, path)


class DevTokenAuthorizer:
    """The GitLab authorizer's rules, answered from a file; tokens compared in constant time."""

    def __init__(self, tokens: DevTokens, min_access_level: int) -> None:
        self._tokens = tokens
        self._min_level = min_access_level

    def _find(self, credential: Credential) -> DevToken:
        if credential.scheme == "session":
            raise unauthorized()  # no GitLab to ask about a session: tokens only
        found = None
        given = credential.token.encode()
        for entry in self._tokens.tokens:  # no early exit: the time does not tell which token matched
            if hmac.compare_digest(given, entry.token.encode()):
                found = entry
        if found is None:
            raise unauthorized()
        return found

    def expire(self) -> None:
        """Nothing to expire: the tokens are a file read at start-up."""

    async def authorize(
        self, credential: Credential, project_ref: str, method: str, trace: Traced | None = None
    ) -> Grant:
        entry = self._find(credential)
        project_ref = check_project_ref(project_ref)
        needed, satisfying = required_scope(method)
        if not entry.caller.scopes & satisfying:
            raise insufficient_scope(needed)
        numeric = project_id(project_ref)
        project = numeric if numeric is not None else self._tokens.paths.get(project_ref)
        if project is None or (project not in entry.roles and not entry.caller.is_admin):
            raise project_not_found()
        if not entry.caller.is_admin and entry.roles[project] < self._min_level:
            raise access_denied()
        return Grant(entry.caller, project)

    async def identify(self, credential: Credential, trace: Traced | None = None) -> Caller:
        return self._find(credential).caller

    async def mint_token(self, credential: Credential, grant: Grant, trace: Traced | None = None) -> str:
        """No GitLab to mint with: a random stand-in, marked as such."""
        self._find(credential)
        return f"dev-minted-{secrets.token_hex(16)}"
