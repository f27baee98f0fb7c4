"""Settings: frozen dataclasses read from a TOML file and the environment.

Validated once at start-up; every problem is collected and reported together in
one :class:`SettingsError`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yarl

from proxy.ids import project_id
from proxy.urls import REDACTED, redact_url

AuthBackendName = Literal["gitlab", "dev_tokens"]

#: Cube rejects (with a 500) any query asking for more rows than this.
CUBE_MAX_LIMIT = 50_000


class SettingsError(Exception):
    """Invalid settings; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:  # one line, as a container's log shows it
            super().__init__(f"invalid settings: {problems[0]}")
        else:
            super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: worker processes forked by the parent, each with its own listening socket (SO_REUSEPORT).
    workers: int = 1
    #: seconds in-flight requests (and streams) get to finish on SIGTERM.
    shutdown_timeout: float = 30.0
    #: seconds a connection may sit idle between requests, or take to send a request's head.
    keepalive_timeout: float = 75.0
    #: seconds a caller may read nothing of an answer still being written; then it is cut off.
    write_timeout: float = 30.0
    #: "json" (one JSON object per line) or "text".
    log_format: str = "json"
    log_level: str = "INFO"
    #: shed new analytics requests (503) while the event loop is this many ms behind; 0 (the default) never sheds.
    shed_lag_ms: float = 0.0
    #: serve plain load and dry-run calls through the fast lane (proxy/lane/); false: aiohttp serves all.
    fast_lane: bool = True
    #: serve the query explorer page at /-/explorer (it calls the proxy's own API, as any caller)
    explorer: bool = True
    #: a page of GitLab's, on the explorer's origin, whose csrf-token meta tag the explorer reads for a
    #: session's POSTs (when a load balancer serves the explorer on GitLab's origin)
    explorer_csrf_page: str = "/"
    #: count requests for /-/metrics and /-/status (false: both are 404, and nothing is counted)
    metrics: bool = True
    #: serve /-/metrics (and /-/status) on this loopback port instead of the public listener; 0: on the public one
    metrics_port: int = 0
    #: the address the metrics port listens on: loopback by default; "0.0.0.0" for a scraper from outside the
    #: host (a pod's named metrics port). The status page there still answers loopback callers only.
    metrics_host: str = "127.0.0.1"
    #: label analytics request metrics with the project id (up to ``metrics_max_projects`` ids; the rest "other")
    metrics_project_label: bool = False
    metrics_max_projects: int = 100
    #: seconds between SIGTERM (readiness turns 503 at once) and the drain, while the listener keeps serving
    drain_delay: float = 5.0
    #: peers whose X-Forwarded-For is believed (addresses or networks, e.g. ["10.0.0.0/8"]); none by default
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class GitLabSettings:
    url: str = "https://gitlab.example.com"
    #: seconds for one GitLab REST call, connect included.
    timeout: float = 5.0
    #: minimum effective access level: 10 guest, 20 reporter, 30 developer, 40 maintainer, 50 owner.
    min_access_level: int = 20
    #: seconds a positive GitLab answer (user, scopes, project, membership) is reused.
    cache_ttl: float = 30.0
    #: seconds a negative answer (401, 403, 404) is reused.
    negative_cache_ttl: float = 5.0
    #: entries kept per cache (users, projects, memberships).
    cache_size: int = 10_000
    #: Retry-After seconds sent with 503 when GitLab is unavailable.
    retry_after: int = 5
    #: GitLab calls in flight at once (more wait, within ``timeout``).
    max_concurrent_calls: int = 32
    #: credentials not seen yet that GitLab is asked about per second, and in a burst; more get a 503.
    new_credentials_per_second: float = 50.0
    new_credentials_burst: int = 500
    #: readiness also needs GitLab to answer (any HTTP answer below 500 from its /-/liveness)
    ready_check: bool = False
    #: accept GitLab's own browser session (the dashboards' callers, spec section 2.1)
    sessions: bool = True
    #: the name of GitLab's session cookie
    session_cookie: str = "_gitlab_session"


@dataclass(frozen=True)
class AuthSettings:
    #: "gitlab" (the default) or "dev_tokens" (a local token file; loopback only).
    backend: AuthBackendName = "gitlab"
    dev_tokens_file: str = "config/dev-tokens.toml"
    #: allow the dev_tokens backend on a non-loopback listen address.
    allow_dev_tokens_off_loopback: bool = False


@dataclass(frozen=True)
class ProjectOverride:
    enabled: bool | None = None
    cube_api_base_url: str | None = None
    cube_api_key: str | None = None
    #: a file holding the key (a mounted secret), instead of cube_api_key
    cube_api_key_file: str | None = None


@dataclass(frozen=True)
class AnalyticsSettings:
    enabled: bool = True
    cube_api_base_url: str | None = None
    cube_api_key: str | None = None
    #: a file holding the key (a mounted secret), instead of cube_api_key
    cube_api_key_file: str | None = None
    #: seconds between the JWT's iat and exp.
    jwt_ttl: int = 180


@dataclass(frozen=True)
class CubeSettings:
    #: seconds to connect to Cube.
    connect_timeout: float = 5.0
    #: seconds Cube may stay silent (before headers, or between body chunks).
    read_timeout: float = 30.0
    #: seconds the proxy keeps asking again while Cube says "Continue wait"; 0 passes it through.
    continue_wait_budget: float = 25.0
    #: the least seconds between two Continue-wait rounds (Cube itself holds a call about 5 s).
    continue_wait_pause: float = 0.5
    #: concurrent upstream calls per tenant; more wait up to queue_timeout, then 503.
    max_concurrent_per_tenant: int = 32
    #: seconds a call may wait for a tenant slot, and again for a free connection to Cube, before a 503.
    queue_timeout: float = 10.0
    #: seconds meta answers are cached per tenant, and how many tenants are kept.
    meta_cache_ttl: float = 60.0
    meta_cache_size: int = 1024
    #: bytes of meta answers kept at most (each answer weighs its size; one larger than this is not kept)
    meta_cache_bytes: int = 64 * 1024 * 1024
    #: bodies up to this many bytes are read whole (and shared whole); larger ones stream.
    buffer_limit: int = 256 * 1024
    #: the largest answer read whole although large (meta, which is cached, and zero-filled loads); 502 above.
    max_whole_bytes: int = 64 * 1024 * 1024
    #: bytes of answers read whole (meta, zero-fills) held at once, from their first byte read until they are
    #: filled or cached (taken from Cube's Content-Length before reading: 503 past it, nothing read)
    whole_answers_bytes: int = 256 * 1024 * 1024
    #: open connections per Cube origin; more calls wait for one, up to queue_timeout.
    pool_size: int = 256
    #: seconds a readiness probe's answer is reused (probes use their own few connections).
    readiness_ttl: float = 1.0


@dataclass(frozen=True)
class LimitsSettings:
    #: largest request body accepted (413 above).
    max_body_bytes: int = 1024 * 1024
    #: deepest JSON nesting accepted in a request body.
    max_json_depth: int = 32
    #: seconds a request body may take to arrive (408 after), so a trickling caller holds nothing long.
    body_timeout: float = 30.0
    #: bytes of request bodies being received at once by one process, and from one client address
    #: (503 with Retry-After past either; a chunked body counts as max_body_bytes)
    bodies_in_flight_bytes: int = 64 * 1024 * 1024
    bodies_in_flight_per_client_bytes: int = 16 * 1024 * 1024
    #: sustained requests per second per caller (one bucket per credential); 0 disables.
    rate_limit: float = 50.0
    #: requests a caller may burst above the sustained rate.
    rate_limit_burst: int = 200
    #: callers remembered by the rate limiter.
    rate_limit_callers: int = 100_000


@dataclass(frozen=True)
class RedisSettings:
    #: the shared layer's Redis (redis://host:6379/0, rediss://..., unix:///path); unset (and no sentinels):
    #: every cache in-process
    url: str | None = None
    #: Redis' ACL user and its password (or a file holding it), apart from the URL so the URL holds no secret
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    #: TLS (rediss://, or tls = true with sentinels): the CA that signed Redis' certificate (else the system's),
    #: and a client certificate and its key when Redis asks for one
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls: bool = False
    #: Redis Sentinel instead of url: "host:port" of each sentinel, the primary's service name, its database
    sentinels: tuple[str, ...] = ()
    service_name: str | None = None
    db: int = 0
    #: the sentinels' own ACL user and password (or a file holding it)
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_password_file: str | None = None
    #: the HMAC key every shared value is signed with (32+ bytes; required with url), or a file holding it
    signing_key: str | None = None
    signing_key_file: str | None = None
    #: the prefix of every key: one per deployment sharing a Redis
    key_prefix: str = "product-analytics-proxy:"
    #: seconds one Redis call may take (then the proxy goes on without it); also the longest a process waits
    #: for another's shared load before it loads for itself
    timeout: float = 0.25
    #: seconds a shared load's lock lives at most (a holder that died frees it then)
    lock_ttl: float = 6.0
    #: seconds a shared answer stays in a process's own cache in front of Redis
    local_ttl: float = 2.0

    @property
    def enabled(self) -> bool:
        """Whether there is a shared layer: a URL or sentinels."""
        return self.url is not None or bool(self.sentinels)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    gitlab: GitLabSettings = field(default_factory=GitLabSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    product_analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    cube: CubeSettings = field(default_factory=CubeSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    projects: Mapping[int, ProjectOverride] = field(default_factory=dict)


#: every setting also comes from the environment as PROXY_<SECTION>__<KEY> (PROXY_CUBE__READ_TIMEOUT),
#: a project's as PROXY_PROJECTS__<ID>__<KEY>; these older short names still work too
ENV_PREFIX = "PROXY_"
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "PROXY_HOST": ("server", "host"),
    "PROXY_PORT": ("server", "port"),
    "PROXY_WORKERS": ("server", "workers"),
    "GITLAB_URL": ("gitlab", "url"),
    "CUBE_API_BASE_URL": ("product_analytics", "cube_api_base_url"),
    "CUBE_API_KEY": ("product_analytics", "cube_api_key"),
}

#: a cookie name: an RFC 6265 token
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "gitlab": GitLabSettings,
    "auth": AuthSettings,
    "product_analytics": AnalyticsSettings,
    "cube": CubeSettings,
    "limits": LimitsSettings,
    "redis": RedisSettings,
}

MIN_KEY_BYTES = 32


def _coerce(value: Any, typ: Any, where: str, problems: list[str], from_env: bool) -> Any:
    """Check (and, for environment strings, convert) one value against its annotated type."""
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is Literal:
        if value in args:
            return value
        problems.append(f"{where}: must be one of {', '.join(map(repr, args))}, not {value!r}")
        return None
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, where, problems, from_env)
    if origin is tuple:  # tuple[str, ...]: a TOML array, or a comma-separated environment value
        if from_env and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        problems.append(f"{where}: must be a list of strings, not {value!r}")
        return None
    if typ is bool:
        if from_env and isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
            return value.lower() in {"1", "true", "yes"}
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: must be true or false, not {value!r}")
        return None
    if typ is int or typ is float:
        if from_env and isinstance(value, str):
            try:
                value = typ(value)
            except ValueError:
                problems.append(f"{where}: must be a number, not {value!r}")
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: must be a number, not {value!r}")
            return None
        if typ is int and not isinstance(value, int):
            problems.append(f"{where}: must be a whole number, not {value!r}")
            return None
        return typ(value)
    if typ is str:
        if isinstance(value, str):
            return value
        problems.append(f"{where}: must be a string, not {value!r}")
        return None
    raise TypeError(f"unsupported settings type {typ!r}")  # pragma: no cover - programming error


def _build_section(cls: type[Any], raw: Mapping[str, Any], name: str, problems: list[str], env_keys: set[str]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            problems.append(f"[{name}] {key}: unknown setting (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key in known & raw.keys():
        coerced = _coerce(raw[key], hints[key], f"[{name}] {key}", problems, from_env=key in env_keys)
        if coerced is not None or raw[key] is None:
            values[key] = coerced
    return cls(**values)


def _is_http_url(value: str) -> bool:
    try:
        url = yarl.URL(value)
    except ValueError:
        return False
    return url.scheme in {"http", "https"} and bool(url.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(s: Settings, problems: list[str]) -> None:
    positive = {
        "[server] port": s.server.port,
        "[server] workers": s.server.workers,
        "[server] keepalive_timeout": s.server.keepalive_timeout,
        "[server] write_timeout": s.server.write_timeout,
        "[server] metrics_max_projects": s.server.metrics_max_projects,
        "[gitlab] timeout": s.gitlab.timeout,
        "[gitlab] cache_size": s.gitlab.cache_size,
        "[gitlab] min_access_level": s.gitlab.min_access_level,
        "[gitlab] max_concurrent_calls": s.gitlab.max_concurrent_calls,
        "[gitlab] new_credentials_burst": s.gitlab.new_credentials_burst,
        "[product_analytics] jwt_ttl": s.product_analytics.jwt_ttl,
        "[cube] connect_timeout": s.cube.connect_timeout,
        "[cube] read_timeout": s.cube.read_timeout,
        "[cube] max_concurrent_per_tenant": s.cube.max_concurrent_per_tenant,
        "[cube] meta_cache_size": s.cube.meta_cache_size,
        "[cube] meta_cache_bytes": s.cube.meta_cache_bytes,
        "[cube] buffer_limit": s.cube.buffer_limit,
        "[cube] max_whole_bytes": s.cube.max_whole_bytes,
        "[cube] whole_answers_bytes": s.cube.whole_answers_bytes,
        "[cube] pool_size": s.cube.pool_size,
        "[limits] max_body_bytes": s.limits.max_body_bytes,
        "[limits] max_json_depth": s.limits.max_json_depth,
        "[limits] body_timeout": s.limits.body_timeout,
        "[limits] bodies_in_flight_bytes": s.limits.bodies_in_flight_bytes,
        "[limits] bodies_in_flight_per_client_bytes": s.limits.bodies_in_flight_per_client_bytes,
        "[limits] rate_limit_burst": s.limits.rate_limit_burst,
        "[limits] rate_limit_callers": s.limits.rate_limit_callers,
    }
    for where, value in positive.items():
        if value <= 0:
            problems.append(f"{where}: must be greater than 0, not {value!r}")
    non_negative = {
        "[gitlab] cache_ttl": s.gitlab.cache_ttl,
        "[gitlab] negative_cache_ttl": s.gitlab.negative_cache_ttl,
        "[gitlab] retry_after": s.gitlab.retry_after,
        "[gitlab] new_credentials_per_second": s.gitlab.new_credentials_per_second,
        "[server] shutdown_timeout": s.server.shutdown_timeout,
        "[server] shed_lag_ms": s.server.shed_lag_ms,
        "[server] drain_delay": s.server.drain_delay,
        "[cube] continue_wait_budget": s.cube.continue_wait_budget,
        "[cube] continue_wait_pause": s.cube.continue_wait_pause,
        "[cube] queue_timeout": s.cube.queue_timeout,
        "[cube] meta_cache_ttl": s.cube.meta_cache_ttl,
        "[cube] readiness_ttl": s.cube.readiness_ttl,
        "[limits] rate_limit": s.limits.rate_limit,
    }
    for where, value in non_negative.items():
        if value < 0:
            problems.append(f"{where}: must not be negative, not {value!r}")
    if s.server.port > 65535:
        problems.append(f"[server] port: must be at most 65535, not {s.server.port}")
    if s.server.log_format not in {"json", "text"}:
        problems.append(f"[server] log_format: must be 'json' or 'text', not {s.server.log_format!r}")
    if s.server.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"[server] log_level: must be DEBUG, INFO, WARNING or ERROR, not {s.server.log_level!r}")
    if not s.server.explorer_csrf_page.startswith("/") or s.server.explorer_csrf_page.startswith("//"):
        problems.append(
            f"[server] explorer_csrf_page: must be a path on the explorer's origin, not {s.server.explorer_csrf_page!r}"
        )
    for proxy_address in s.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy_address, strict=False)
        except ValueError:
            problems.append(f"[server] trusted_proxies: {proxy_address!r} is not an address or network")
    try:
        ipaddress.ip_address(s.server.metrics_host)
    except ValueError:
        problems.append(f"[server] metrics_host: must be an IP address, not {s.server.metrics_host!r}")
    if not 0 <= s.server.metrics_port <= 65535:
        problems.append(f"[server] metrics_port: must be a port (1-65535) or 0 (off), not {s.server.metrics_port}")
    _validate_redis(s.redis, problems)
    for where, value in {
        "[redis] timeout": s.redis.timeout,
        "[redis] lock_ttl": s.redis.lock_ttl,
        "[redis] local_ttl": s.redis.local_ttl,
    }.items():
        if value <= 0:
            problems.append(f"{where}: must be greater than 0, not {value!r}")
    if not _COOKIE_NAME.fullmatch(s.gitlab.session_cookie):
        problems.append(
            f"[gitlab] session_cookie: must be a cookie name (letters, digits and !#$%&'*+-.^_`|~),"
            f" not {s.gitlab.session_cookie!r}"
        )
    if s.auth.backend == "gitlab" and not _is_http_url(s.gitlab.url):
        problems.append(f"[gitlab] url: must be an http(s) URL, not {redact_url(s.gitlab.url)!r}")
    if s.auth.backend == "dev_tokens" and not is_loopback(s.server.host) and not s.auth.allow_dev_tokens_off_loopback:
        problems.append(
            f"[auth] backend: dev_tokens only serves a loopback address, and [server] host is {s.server.host!r};"
            " set [auth] allow_dev_tokens_off_loopback = true to allow it"
        )
    _validate_cube_target(
        "[product_analytics]", s.product_analytics.cube_api_base_url, s.product_analytics.cube_api_key, problems
    )
    for number, override in s.projects.items():
        _validate_cube_target(f"[projects.{number}]", override.cube_api_base_url, override.cube_api_key, problems)


def _validate_redis(r: RedisSettings, problems: list[str]) -> None:
    if r.url is not None and r.sentinels:
        problems.append("[redis]: set url or sentinels, not both")
    if r.url is not None and _url_scheme(r.url) not in {"redis", "rediss", "unix"}:
        problems.append(f"[redis] url: must be a redis://, rediss:// or unix:// URL, not {redact_url(r.url)!r}")
    for entry in r.sentinels:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            problems.append(f"[redis] sentinels: {entry!r} is not host:port")
    if r.sentinels and not r.service_name:
        problems.append("[redis] service_name: required with sentinels (the primary's name in Sentinel)")
    if r.enabled and (r.signing_key is None or len(r.signing_key.encode()) < MIN_KEY_BYTES):
        problems.append(f"[redis] signing_key: required with url or sentinels, {MIN_KEY_BYTES} bytes or more")
    tls = r.tls if r.sentinels else r.url is not None and r.url.startswith("rediss://")
    if r.tls and not r.sentinels:
        problems.append("[redis] tls: for sentinels; with a url, rediss:// turns TLS on")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(r, name)
        if path is None:
            continue
        if not tls:
            problems.append(f"[redis] {name}: needs TLS (a rediss:// url, or tls = true with sentinels)")
        elif not Path(path).is_file():
            problems.append(f"[redis] {name}: {path} is not a readable file")
    if (r.cert_file is None) != (r.key_file is None):
        problems.append("[redis] cert_file and key_file: set both (a client certificate and its key) or neither")
    if r.db < 0:
        problems.append(f"[redis] db: must not be negative, not {r.db}")


def _url_scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def _validate_cube_target(where: str, url: str | None, key: str | None, problems: list[str]) -> None:
    if url is not None and not _is_http_url(url):
        problems.append(f"{where} cube_api_base_url: must be an http(s) URL, not {redact_url(url)!r}")
    if key is not None and len(key.encode()) < MIN_KEY_BYTES:
        problems.append(f"{where} cube_api_key: must be at least {MIN_KEY_BYTES} bytes (HS256 secret)")


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from parsed TOML plus environment overrides; raise every problem at once."""
    problems: list[str] = []
    env = {} if env is None else env
    sections: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        section = raw.get(name, {})
        if not isinstance(section, Mapping):
            problems.append(f"[{name}]: must be a table")
            section = {}
        sections[name] = dict(section)
    for name in raw:
        if name not in _SECTIONS and name != "projects":
            problems.append(f"[{name}]: unknown section (known: {', '.join([*_SECTIONS, 'projects'])})")
    env_keys: dict[str, set[str]] = {name: set() for name in _SECTIONS}
    for var, (section_name, key) in ENV_OVERRIDES.items():
        if var in env:
            sections[section_name][key] = env[var]
            env_keys[section_name].add(key)
    raw_projects_env: dict[str, dict[str, Any]] = {}
    for var, value in env.items():  # the general rule, which wins over the short names
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) == 2 and parts[0] in _SECTIONS:
            sections[parts[0]][parts[1]] = value
            env_keys[parts[0]].add(parts[1])
        elif len(parts) == 3 and parts[0] == "projects":
            raw_projects_env.setdefault(parts[1], {})[parts[2]] = value
        else:
            problems.append(f"{var}: not a setting (PROXY_<SECTION>__<KEY> or PROXY_PROJECTS__<ID>__<KEY>)")
    built = {
        name: _build_section(cls, sections[name], name, problems, env_keys[name]) for name, cls in _SECTIONS.items()
    }

    projects: dict[int, ProjectOverride] = {}
    raw_projects = raw.get("projects", {})
    if not isinstance(raw_projects, Mapping):
        problems.append("[projects]: must be a table of [projects.<numeric id>] tables")
        raw_projects = {}
    raw_projects = {str(k): v for k, v in raw_projects.items()}
    for key, values in raw_projects_env.items():
        existing = raw_projects.get(key, {})
        raw_projects[key] = {**existing, **values} if isinstance(existing, Mapping) else existing
    for key, value in raw_projects.items():
        if project_id(str(key)) is None:
            problems.append(f"[projects.{key}]: the key must be a numeric project id")
            continue
        if not isinstance(value, Mapping):
            problems.append(f"[projects.{key}]: must be a table")
            continue
        env_project_keys = set(raw_projects_env.get(key, {}))
        override = _build_section(ProjectOverride, value, f"projects.{key}", problems, env_project_keys)
        projects[int(key)] = _secret_from_file(override, "cube_api_key", f"[projects.{key}]", problems)

    built["product_analytics"] = _secret_from_file(
        built["product_analytics"], "cube_api_key", "[product_analytics]", problems
    )
    for secret in ("signing_key", "password", "sentinel_password"):
        built["redis"] = _secret_from_file(built["redis"], secret, "[redis]", problems)
    settings = Settings(projects=projects, **built)
    _validate(settings, problems)
    if problems:
        raise SettingsError(problems)
    return settings


def _secret_from_file(section: Any, field: str, where: str, problems: list[str]) -> Any:
    """``field`` read from ``<field>_file`` (a mounted secret), stripped of surrounding whitespace."""
    path = getattr(section, f"{field}_file")
    if path is None:
        return section
    if getattr(section, field) is not None:
        problems.append(f"{where}: set {field} or {field}_file, not both")
        return section
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        problems.append(f"{where} {field}_file: cannot read {path}: {exc.strerror or exc}")
        return section
    return dataclasses.replace(section, **{field: secret})


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced and every URL shown without its secrets
    (for --print-config and the status page)."""
    data = dataclasses.asdict(settings)
    data["projects"] = {str(k): v for k, v in data["projects"].items()}
    for section in (data["product_analytics"], *data["projects"].values()):
        if section.get("cube_api_key") is not None:
            section["cube_api_key"] = REDACTED
        if section.get("cube_api_base_url") is not None:
            section["cube_api_base_url"] = redact_url(section["cube_api_base_url"])
    data["gitlab"]["url"] = redact_url(data["gitlab"]["url"])
    redis = data["redis"]
    for secret in ("signing_key", "password", "sentinel_password"):
        if redis[secret] is not None:
            redis[secret] = REDACTED
    if redis["url"] is not None:
        redis["url"] = redact_url(redis["url"])
    redis["sentinels"] = list(redis["sentinels"])
    return data


def load_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; raise :class:`SettingsError` on any problem."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path:  # None or "": no file, the environment alone
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError([f"{path}: cannot read the settings file ({exc.strerror})"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError([f"{path}: not valid TOML ({exc})"]) from exc
    return settings_from_mapping(raw, env)
