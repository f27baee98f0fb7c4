"""The settings' rules across fields and sections: every problem found is collected, none stops the others."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yarl

from proxy.settings.model import NON_NEGATIVE, POSITIVE, RATIO, SHARE, RedisSettings, Settings, TracingSettings
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


def _sections(s: Settings) -> Iterator[tuple[str, Any]]:
    """Every section of the settings by the name it is written under (each project's override too)."""
    for f in dataclasses.fields(s):
        section = getattr(s, f.name)
        if dataclasses.is_dataclass(section):
            yield f"[{f.name}]", section
    for number, override in s.projects.items():
        yield f"[projects.{number}]", override


def _bounds(s: Settings, problems: list[str]) -> None:
    """Each field's bound, as its metadata says it (``model.setting``): numbers finite, durations at most a year."""
    for where, section in _sections(s):
        for f in dataclasses.fields(section):
            bound = f.metadata.get("bound")
            value = getattr(section, f.name)
            if bound is None or value is None:  # no bound, or an override left unset
                continue
            name = f"{where} {f.name}"
            if not math.isfinite(value):  # nan passes every comparison, inf every lower bound
                problems.append(f"{name}: must be a finite number, not {value!r}")
            elif bound == POSITIVE and value <= 0:
                problems.append(f"{name}: must be greater than 0, not {value!r}")
            elif bound == NON_NEGATIVE and value < 0:
                problems.append(f"{name}: must not be negative, not {value!r}")
            elif bound == SHARE and not 0 < value <= 1:
                problems.append(f"{name}: must be more than 0 and at most 1, not {value!r}")
            elif bound == RATIO and not 0 <= value <= 1:
                problems.append(f"{name}: must be from 0 to 1, not {value!r}")
            elif _DURATION.search(f.name) and value > MAX_SECONDS:
                problems.append(f"{name}: must be at most {MAX_SECONDS:g} seconds (a year), not {value!r}")


def validate(s: Settings, problems: list[str]) -> None:
    _bounds(s, problems)
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
    _validate_tracing(s.tracing, problems)
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


def _validate_tracing(t: TracingSettings, problems: list[str]) -> None:
    if not _is_http_url(t.endpoint):
        problems.append(f"[tracing] endpoint: must be an http(s) URL, not {redact_url(t.endpoint)!r}")
    if t.headers is not None:
        try:
            otlp_headers(t.headers)
        except ValueError as exc:
            problems.append(f"[tracing] headers: {exc}")
    if not t.service_name.strip():
        problems.append("[tracing] service_name: must not be empty")


#: an HTTP header's name (an RFC 9110 token)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def otlp_headers(text: str) -> dict[str, str]:
    """OTLP's headers form, ``name=value`` pairs split by commas (or lines, as a secret file may hold them), each
    value percent-decoded (OTEL_EXPORTER_OTLP_HEADERS' rule); ValueError naming the first pair that is not one,
    never its value (a header here is usually a secret)."""
    headers: dict[str, str] = {}
    for number, pair in enumerate(re.split(r"[,\n]", text), 1):
        if not pair.strip():
            continue
        name, equals, value = pair.partition("=")
        name = name.strip()
        if not equals or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"pair {number} is not name=value (a header name, then =, then its value)")
        decoded = urllib.parse.unquote(value.strip())
        if any(c in decoded for c in "\r\n\0"):
            raise ValueError(f"the value of {name} holds a line break or NUL")
        headers[name] = decoded
    return headers


def _url_scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def _validate_cube_target(where: str, url: str | None, key: str | None, problems: list[str]) -> None:
    if url is not None and not _is_http_url(url):
        problems.append(f"{where} cube_api_base_url: must be an http(s) URL, not {redact_url(url)!r}")
    if key is not None and len(key.encode()) < MIN_KEY_BYTES:
        problems.append(f"{where} cube_api_key: must be at least {MIN_KEY_BYTES} bytes (HS256 secret)")
