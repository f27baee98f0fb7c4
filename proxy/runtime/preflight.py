"""Checks before traffic: is there anything to serve, do GitLab and every Cube answer, is the proxy alive.

``--check --connect`` reaches GitLab and, for each configured Cube, signs a JWT with that
Cube's key and asks ``/meta``: a wrong key is found before the first caller finds it.
``--health`` asks the running proxy's ``/-/liveness`` on the configured port (the image's
health check). Each says what it found in one line per target.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import aiohttp
import yarl
from redis.exceptions import RedisError

from proxy.cube.signing import sign_security_context
from proxy.cube.tenants import Tenant, app_id_for
from proxy.settings import Settings
from proxy.shared.connect import redis_client
from proxy.urls import redact_urls

#: seconds each check may take
CHECK_TIMEOUT = 10.0


def nothing_to_serve(settings: Settings) -> str | None:
    """Why the proxy has nothing to serve (no Cube with a key anywhere), or None."""
    targets = cube_targets(settings)
    if targets:
        return None
    return (
        "no Cube is configured: set [product_analytics] cube_api_base_url and cube_api_key (or cube_api_key_file),"
        " or PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL and PROXY_PRODUCT_ANALYTICS__CUBE_API_KEY;"
        " config/proxy.example.toml lists every setting"
    )


def cube_targets(settings: Settings) -> list[Tenant]:
    """One tenant per distinct (Cube URL, key) the settings name: the global one (as project 0) and each override."""
    found: dict[tuple[str, str], Tenant] = {}
    analytics = settings.product_analytics
    if analytics.cube_api_base_url and analytics.cube_api_key:
        url = analytics.cube_api_base_url.rstrip("/")
        found[(url, analytics.cube_api_key)] = Tenant(0, app_id_for(0), url, analytics.cube_api_key)
    for project_id, override in sorted(settings.projects.items()):
        if override.enabled is False:
            continue
        url = (override.cube_api_base_url or analytics.cube_api_base_url or "").rstrip("/")
        key = override.cube_api_key or analytics.cube_api_key or ""
        if url and key and (url, key) not in found:
            found[(url, key)] = Tenant(project_id, app_id_for(project_id), url, key)
    return list(found.values())


async def connect(settings: Settings) -> list[tuple[bool, str]]:
    """Each target reached or not, with what was found: GitLab (unless dev tokens), then every Cube."""
    results: list[tuple[bool, str]] = []
    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT)
    issuer = yarl.URL(settings.gitlab.url).host or settings.gitlab.url
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if settings.auth.backend == "gitlab":
            url = f"{settings.gitlab.url.rstrip('/')}/-/liveness"
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    results.append((resp.status < 500, f"GitLab {settings.gitlab.url}: answered {resp.status}"))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                results.append((False, f"GitLab {settings.gitlab.url}: unreachable ({type(exc).__name__}: {exc})"))
        for tenant in cube_targets(settings):
            whose = "every project" if tenant.project_id == 0 else f"project {tenant.project_id}"
            where = f"Cube {tenant.cube_base_url} (the key for {whose})"
            jwt = sign_security_context(tenant, issuer, int(time.time()), settings.product_analytics.jwt_ttl, None)
            try:
                async with session.get(tenant.endpoint("meta"), headers={"Authorization": jwt}) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        results.append((True, f"{where}: /meta answered 200"))
                    elif resp.status == 403:
                        results.append((False, f"{where}: refused the signed token (403): the key is not Cube's"))
                    else:
                        results.append((False, f"{where}: /meta answered {resp.status}: {body[:200]}"))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                results.append((False, f"{where}: unreachable ({type(exc).__name__}: {exc})"))
    if settings.redis.enabled:
        results.append(await _redis_answers(settings))
    return results


async def _redis_answers(settings: Settings) -> tuple[bool, str]:
    """Whether the shared layer's Redis (a URL, or the primary Sentinel names) answers PING as configured."""
    where = f"Redis {settings.redis.url or ', '.join(settings.redis.sentinels)}"
    client = redis_client(settings.redis)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await client.ping()
    except (TimeoutError, RedisError, OSError) as exc:
        return False, f"{where}: unreachable or refused ({type(exc).__name__}: {exc})"
    finally:
        await client.aclose()
    return True, f"{where}: answered PING"


def check_connections(settings: Settings) -> int:
    """``--check --connect``: one line per target; 0 when every one answered as it should, else 1."""
    results = asyncio.run(connect(settings))
    for ok, line in results:
        print(f"{'ok  ' if ok else 'FAIL'} {redact_urls(line)}")
    return 0 if all(ok for ok, _ in results) else 1


def health(settings: Settings) -> int:
    """``--health``: 0 when the proxy on the configured port answers ``/-/liveness`` with 200, else 1."""
    host = settings.server.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - the listener's wildcard, asked on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.server.port}/-/liveness"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1
