"""The settings' shape: one frozen dataclass per section, each field with its default and meaning.

Every field's ``#:`` comment is its documentation: ``docs/configuration.md`` is generated
from them (``python -m proxy.settings.reference``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

AuthBackendName = Literal["gitlab", "dev_tokens"]
LogFormat = Literal["json", "text"]

#: a setting's bounds, as its field's metadata says them (the checks, the docs and the redaction read them)
POSITIVE = "more than 0"
NON_NEGATIVE = "0 or more"
SHARE = "more than 0 and at most 1"
RATIO = "0 to 1"


def setting(default: Any, *, bound: str | None = None, secret: bool = False, url: bool = False) -> Any:
    """A field's default and the rules it keeps, on the field itself: its ``bound`` (``checks.py`` enforces it and
    ``configuration.md`` says it), ``secret`` (never shown: ``redacted``), ``url`` (shown without its secrets)."""
    return field(default=default, metadata={"bound": bound, "secret": secret, "url": url})


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
    #: the address the proxy listens on ("0.0.0.0" for every interface)
    host: str = "127.0.0.1"
    #: the port the proxy listens on (every worker shares it)
    port: int = setting(8080, bound=POSITIVE)
    #: worker processes forked by the parent, each with its own listening socket (SO_REUSEPORT).
    workers: int = setting(1, bound=POSITIVE)
    #: seconds in-flight requests (and streams) get to finish on SIGTERM.
    shutdown_timeout: float = setting(30.0, bound=NON_NEGATIVE)
    #: seconds a connection may sit idle between requests, or take to send a request's head.
    keepalive_timeout: float = setting(75.0, bound=POSITIVE)
    #: seconds a caller may read nothing of an answer still being written; then it is cut off.
    write_timeout: float = setting(30.0, bound=POSITIVE)
    #: "json" (one JSON object per line) or "text".
    log_format: LogFormat = "json"
    #: the lowest level logged: DEBUG, INFO, WARNING or ERROR (probes' access lines are DEBUG)
    log_level: str = "INFO"
    #: shed new analytics requests (503) while the event loop is this many ms behind; 0 (the default) never sheds.
    shed_lag_ms: float = setting(0.0, bound=NON_NEGATIVE)
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
    #: how many project ids become labels with ``metrics_project_label``; the rest count as "other"
    metrics_max_projects: int = setting(100, bound=POSITIVE)
    #: seconds between SIGTERM (readiness turns 503 at once) and the drain, while the listener keeps serving
    drain_delay: float = setting(5.0, bound=NON_NEGATIVE)
    #: peers whose X-Forwarded-For is believed (addresses or networks, e.g. ["10.0.0.0/8"]); none by default
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class GitLabSettings:
    #: GitLab's base URL (its REST API is under /api/v4); the JWT's issuer is its host
    url: str = setting("https://gitlab.example.com", url=True)
    #: seconds for one GitLab REST call, connect included.
    timeout: float = setting(5.0, bound=POSITIVE)
    #: minimum effective access level: 10 guest, 20 reporter, 30 developer, 40 maintainer, 50 owner.
    min_access_level: int = setting(20, bound=POSITIVE)
    #: seconds a positive GitLab answer (user, scopes, project, membership) is reused.
    cache_ttl: float = setting(30.0, bound=NON_NEGATIVE)
    #: seconds a negative answer (401, 403, 404) is reused.
    negative_cache_ttl: float = setting(5.0, bound=NON_NEGATIVE)
    #: entries kept per cache (users, projects, memberships).
    cache_size: int = setting(10_000, bound=POSITIVE)
    #: Retry-After seconds sent with 503 when GitLab is unavailable.
    retry_after: int = setting(5, bound=NON_NEGATIVE)
    #: GitLab calls in flight at once (more wait, within ``timeout``).
    max_concurrent_calls: int = setting(32, bound=POSITIVE)
    #: credentials not seen yet that GitLab is asked about per second; more get a 503.
    new_credentials_per_second: float = setting(50.0, bound=NON_NEGATIVE)
    #: how many credentials not seen yet may be asked about at once, above the rate (a burst).
    new_credentials_burst: int = setting(500, bound=POSITIVE)
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
    #: the dev_tokens backend's token file (tokens, users, roles and projects; the local stack's)
    dev_tokens_file: str = "config/dev-tokens.toml"
    #: allow the dev_tokens backend on a non-loopback listen address.
    allow_dev_tokens_off_loopback: bool = False


@dataclass(frozen=True)
class ProjectOverride:
    """One project's own analytics settings, over ``[product_analytics]``'s (a Cube of its own, or off)."""

    #: whether this project's analytics is on (off: its calls are 404); unset: as [product_analytics] enabled
    enabled: bool | None = None
    #: this project's own Cube (its /cubejs-api/v1 base); unset: [product_analytics]'s
    cube_api_base_url: str | None = setting(None, url=True)
    #: the API secret this project's Cube signs JWTs with; unset: [product_analytics]'s
    cube_api_key: str | None = setting(None, secret=True)
    #: a file holding the key (a mounted secret), instead of cube_api_key
    cube_api_key_file: str | None = None
    #: seconds this project's load and dry-run answers are reused from the answer cache; unset: as
    #: [product_analytics] answer_ttl
    answer_ttl: float | None = setting(None, bound=NON_NEGATIVE)
    #: seconds past answer_ttl this project's answers may still be served while one refresh runs; unset: as
    #: [product_analytics] answer_stale
    answer_stale: float | None = setting(None, bound=NON_NEGATIVE)


@dataclass(frozen=True)
class AnalyticsSettings:
    """Product analytics for every project, unless ``[projects."<id>"]`` says otherwise."""

    #: whether product analytics is on for projects without an override (off: their calls are 404)
    enabled: bool = True
    #: Cube's API base URL, e.g. "http://cube:4000/cubejs-api/v1" (required unless every project has its own)
    cube_api_base_url: str | None = setting(None, url=True)
    #: the API secret Cube checks the proxy's JWTs with (CUBEJS_API_SECRET)
    cube_api_key: str | None = setting(None, secret=True)
    #: a file holding the key (a mounted secret), instead of cube_api_key
    cube_api_key_file: str | None = None
    #: seconds between the JWT's iat and exp.
    jwt_ttl: int = setting(180, bound=POSITIVE)
    #: seconds a load or dry-run answer is reused for every caller allowed on the project (the answer cache,
    #: docs/operations.md); 0, the default: off. 10 to 60 suits dashboards with many viewers
    answer_ttl: float = setting(0.0, bound=NON_NEGATIVE)
    #: seconds past answer_ttl an answer is still served (X-Cache: STALE) while one refresh asks Cube
    answer_stale: float = setting(0.0, bound=NON_NEGATIVE)


@dataclass(frozen=True)
class CubeSettings:
    #: seconds to connect to Cube.
    connect_timeout: float = setting(5.0, bound=POSITIVE)
    #: seconds Cube may stay silent (before headers, or between body chunks).
    read_timeout: float = setting(30.0, bound=POSITIVE)
    #: seconds the proxy keeps asking again while Cube says "Continue wait"; 0 passes it through.
    continue_wait_budget: float = setting(25.0, bound=NON_NEGATIVE)
    #: the least seconds between two Continue-wait rounds (Cube itself holds a call about 5 s).
    continue_wait_pause: float = setting(0.5, bound=NON_NEGATIVE)
    #: concurrent upstream calls per tenant; more wait up to queue_timeout, then 503.
    max_concurrent_per_tenant: int = setting(32, bound=POSITIVE)
    #: seconds a call may wait for a tenant slot, and again for a free connection to Cube, before a 503.
    queue_timeout: float = setting(10.0, bound=NON_NEGATIVE)
    #: seconds meta answers are cached per tenant, and how many tenants are kept.
    meta_cache_ttl: float = setting(60.0, bound=NON_NEGATIVE)
    #: how many tenants' meta answers are kept (the least recently used go first)
    meta_cache_size: int = setting(1024, bound=POSITIVE)
    #: bytes of meta answers kept at most (each answer weighs its size; one larger than this is not kept)
    meta_cache_bytes: int = setting(64 * 1024 * 1024, bound=POSITIVE)
    #: bodies up to this many bytes are read whole (and shared whole); larger ones stream.
    buffer_limit: int = setting(256 * 1024, bound=POSITIVE)
    #: the largest answer read whole although large (meta, which is cached, and zero-filled loads); 502 above.
    max_whole_bytes: int = setting(64 * 1024 * 1024, bound=POSITIVE)
    #: bytes of answers read whole (meta, zero-fills) held at once, from their first byte read until they are
    #: filled or cached (taken from Cube's Content-Length before reading: 503 past it, nothing read)
    whole_answers_bytes: int = setting(256 * 1024 * 1024, bound=POSITIVE)
    #: bytes of answers the answer cache holds in each process (the least recently used go first)
    answer_cache_bytes: int = setting(64 * 1024 * 1024, bound=POSITIVE)
    #: calls that ask Cube to renew its cache (renewQuery) per project and second, in each process; more are 429
    #: (0: no limit)
    renewals_per_second: float = setting(1.0, bound=NON_NEGATIVE)
    #: renewals a project may make at once before renewals_per_second applies
    renewals_burst: int = setting(10, bound=POSITIVE)
    #: the share of answer_cache_bytes one project's answers may take: a project asking many distinct queries
    #: evicts its own least recently used answers, not other projects'
    answer_cache_tenant_share: float = setting(0.25, bound=SHARE)
    #: the largest answer the answer cache keeps (answers larger than [cube] buffer_limit stream: never kept)
    answer_max_bytes: int = setting(256 * 1024, bound=POSITIVE)
    #: with [redis], answers up to this size are shared with the fleet (signed); larger ones stay per process
    answer_shared_max_bytes: int = setting(64 * 1024, bound=NON_NEGATIVE)
    #: with [redis], bytes of answers one project may write to Redis per its answer_ttl (so it holds at most twice
    #: that there); past it, its answers stay in each process until the window ends
    answer_shared_tenant_bytes: int = setting(64 * 1024 * 1024, bound=POSITIVE)
    #: open connections per Cube origin; more calls wait for one, up to queue_timeout.
    pool_size: int = setting(256, bound=POSITIVE)
    #: seconds a readiness probe's answer is reused (probes use their own few connections).
    readiness_ttl: float = setting(1.0, bound=NON_NEGATIVE)


@dataclass(frozen=True)
class LimitsSettings:
    #: largest request body accepted (413 above).
    max_body_bytes: int = setting(1024 * 1024, bound=POSITIVE)
    #: deepest JSON nesting accepted in a request body.
    max_json_depth: int = setting(32, bound=POSITIVE)
    #: seconds a request body may take to arrive (408 after), so a trickling caller holds nothing long.
    body_timeout: float = setting(30.0, bound=POSITIVE)
    #: bytes of request bodies being received at once by one process, and from one client address
    #: (503 with Retry-After past either; a chunked body counts as max_body_bytes)
    bodies_in_flight_bytes: int = setting(64 * 1024 * 1024, bound=POSITIVE)
    #: bytes of request bodies one client address may have in flight at once (503 past it)
    bodies_in_flight_per_client_bytes: int = setting(16 * 1024 * 1024, bound=POSITIVE)
    #: sustained requests per second per caller (one bucket per credential); 0 disables.
    rate_limit: float = setting(50.0, bound=NON_NEGATIVE)
    #: requests a caller may burst above the sustained rate.
    rate_limit_burst: int = setting(200, bound=POSITIVE)
    #: callers remembered by the rate limiter.
    rate_limit_callers: int = setting(100_000, bound=POSITIVE)


@dataclass(frozen=True)
class RedisSettings:
    #: the shared layer's Redis (redis://host:6379/0, rediss://..., unix:///path); unset (and no sentinels):
    #: every cache in-process
    url: str | None = setting(None, url=True)
    #: Redis' ACL user and its password (or a file holding it), apart from the URL so the URL holds no secret
    username: str | None = None
    #: the ACL user's password
    password: str | None = setting(None, secret=True)
    #: a file holding the password (a mounted secret), instead of password
    password_file: str | None = None
    #: TLS (rediss://, or tls = true with sentinels): the CA that signed Redis' certificate (else the system's),
    #: and a client certificate and its key when Redis asks for one
    ca_file: str | None = None
    #: the client certificate to present, when Redis asks for one
    cert_file: str | None = None
    #: the client certificate's private key
    key_file: str | None = None
    #: TLS to Redis through the sentinels (with url, rediss:// says it)
    tls: bool = False
    #: Redis Sentinel instead of url: "host:port" of each sentinel, the primary's service name, its database
    sentinels: tuple[str, ...] = ()
    #: the primary's service name the sentinels know it by (required with sentinels)
    service_name: str | None = None
    #: the database number on the primary the sentinels name
    db: int = 0
    #: the sentinels' own ACL user and password (or a file holding it)
    sentinel_username: str | None = None
    #: the sentinels' own password
    sentinel_password: str | None = setting(None, secret=True)
    #: a file holding the sentinels' password, instead of sentinel_password
    sentinel_password_file: str | None = None
    #: the HMAC key every shared value is signed with (32+ bytes; required with url), or a file holding it
    signing_key: str | None = setting(None, secret=True)
    #: a file holding the signing key (a mounted secret), instead of signing_key
    signing_key_file: str | None = None
    #: the prefix of every key: one per deployment sharing a Redis
    key_prefix: str = "product-analytics-proxy:"
    #: seconds one Redis call may take (then the proxy goes on without it); also the longest a process waits
    #: for another's shared load before it loads for itself
    timeout: float = setting(0.25, bound=POSITIVE)
    #: seconds a shared load's lock lives at most (a holder that died frees it then)
    lock_ttl: float = setting(6.0, bound=POSITIVE)
    #: seconds a shared answer stays in a process's own cache in front of Redis
    local_ttl: float = setting(2.0, bound=POSITIVE)

    @property
    def enabled(self) -> bool:
        """Whether there is a shared layer: a URL or sentinels."""
        return self.url is not None or bool(self.sentinels)


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry traces, sent over OTLP/HTTP (docs/tracing.md); off by default. The standard ``OTEL_*``
    variables set the fields they name (``proxy/settings/load.py``), and ``OTEL_SDK_DISABLED=true`` turns it off."""

    #: record spans and send them to ``endpoint`` (off: one branch per request, nothing else)
    enabled: bool = False
    #: the collector's OTLP/HTTP traces URL (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT
    #: + /v1/traces)
    endpoint: str = setting("http://127.0.0.1:4318/v1/traces", url=True)
    #: headers sent with every export, "name=value" pairs split by commas (OTEL_EXPORTER_OTLP_TRACES_HEADERS); a
    #: collector's API key belongs here, or better in headers_file
    headers: str | None = setting(None, secret=True)
    #: a file holding the headers (a mounted secret), instead of headers; one pair per line or comma
    headers_file: str | None = None
    #: the share of new traces recorded (OTEL_TRACES_SAMPLER_ARG); a trace continued from a trusted caller keeps
    #: its caller's decision (parent-based sampling)
    sample_ratio: float = setting(1.0, bound=RATIO)
    #: the service.name of every span (OTEL_SERVICE_NAME); OTEL_RESOURCE_ATTRIBUTES adds to the resource
    service_name: str = "product-analytics-proxy"
    #: ended spans waiting to be sent, at most; past it new spans are dropped and counted, never memory grown
    queue_size: int = setting(2048, bound=POSITIVE)
    #: spans sent in one export at most
    batch_size: int = setting(512, bound=POSITIVE)
    #: seconds between two exports (sooner when a batch is full)
    export_delay: float = setting(1.0, bound=POSITIVE)
    #: seconds one export may take, retries included; at shutdown the last flush gets at most this (and never
    #: more than [server] shutdown_timeout)
    export_timeout: float = setting(5.0, bound=POSITIVE)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    gitlab: GitLabSettings = field(default_factory=GitLabSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    product_analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    cube: CubeSettings = field(default_factory=CubeSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    projects: Mapping[int, ProjectOverride] = field(default_factory=dict)


#: every setting also comes from the environment as PROXY_<SECTION>__<KEY> (PROXY_CUBE__READ_TIMEOUT),
#: a project's as PROXY_PROJECTS__<ID>__<KEY>; these older short names still work too


#: the file's sections (and the environment's PROXY_<SECTION>__ names), each with its settings class
SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "gitlab": GitLabSettings,
    "auth": AuthSettings,
    "product_analytics": AnalyticsSettings,
    "cube": CubeSettings,
    "limits": LimitsSettings,
    "redis": RedisSettings,
    "tracing": TracingSettings,
}
