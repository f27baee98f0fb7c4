"""The settings' rules across fields and sections: every problem found is collected, none stops the others."""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path

import yarl

from proxy.settings.model import (
    RedisSettings,
    Settings,
)
from proxy.urls import redact_url

#: a cookie name: an RFC 6265 token
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")

MIN_KEY_BYTES = 32
#: the longest duration a setting may name (a TTL, timeout, delay...): Redis and the clocks take it as is
MAX_SECONDS = 365 * 24 * 3600.0
#: the settings that are durations in seconds, by their names' endings
_DURATION = re.compile(r"(ttl|timeout|stale|delay|budget|pause|retry_after)$")


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


def validate(s: Settings, problems: list[str]) -> None:
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
        "[cube] answer_cache_bytes": s.cube.answer_cache_bytes,
        "[cube] answer_max_bytes": s.cube.answer_max_bytes,
        "[cube] answer_shared_tenant_bytes": s.cube.answer_shared_tenant_bytes,
        "[cube] pool_size": s.cube.pool_size,
        "[limits] max_body_bytes": s.limits.max_body_bytes,
        "[limits] max_json_depth": s.limits.max_json_depth,
        "[limits] body_timeout": s.limits.body_timeout,
        "[limits] bodies_in_flight_bytes": s.limits.bodies_in_flight_bytes,
        "[limits] bodies_in_flight_per_client_bytes": s.limits.bodies_in_flight_per_client_bytes,
        "[limits] rate_limit_burst": s.limits.rate_limit_burst,
        "[cube] renewals_burst": s.cube.renewals_burst,
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
        "[cube] renewals_per_second": s.cube.renewals_per_second,
        "[product_analytics] answer_ttl": s.product_analytics.answer_ttl,
        "[product_analytics] answer_stale": s.product_analytics.answer_stale,
        "[cube] answer_shared_max_bytes": s.cube.answer_shared_max_bytes,
        **{f"[projects.{p}] answer_ttl": o.answer_ttl or 0.0 for p, o in s.projects.items()},
        **{f"[projects.{p}] answer_stale": o.answer_stale or 0.0 for p, o in s.projects.items()},
    }
    for where, value in non_negative.items():
        if value < 0:
            problems.append(f"{where}: must not be negative, not {value!r}")
    redis_durations = {"[redis] timeout": s.redis.timeout, "[redis] lock_ttl": s.redis.lock_ttl,
                       "[redis] local_ttl": s.redis.local_ttl}  # fmt: skip
    for where, value in {**positive, **non_negative, **redis_durations}.items():
        if not math.isfinite(value):  # nan passes every comparison above, inf every lower bound
            problems.append(f"{where}: must be a finite number, not {value!r}")
        elif _DURATION.search(where) and value > MAX_SECONDS:
            problems.append(f"{where}: must be at most {MAX_SECONDS:g} seconds (a year), not {value!r}")
    share = s.cube.answer_cache_tenant_share
    if not 0 < share <= 1:  # nan fails this too
        problems.append(f"[cube] answer_cache_tenant_share: must be more than 0 and at most 1, not {share!r}")
    if s.server.port > 65535:
        problems.append(f"[server] port: must be at most 65535, not {s.server.port}")
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
    for where, value in redis_durations.items():
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
