"""Which projects are served, and by which Cube (spec section 3)."""

from __future__ import annotations

from typing import NamedTuple

from proxy.settings import Settings
from proxy.urls import redact_url

#: projects whose resolved tenant is kept (a tenant is a few short strings).
TENANT_CACHE_SIZE = 65_536


class Tenant(NamedTuple):
    """One Cube target; hashable and immutable, as it keys the coalescer, the meta cache and the signer."""

    project_id: int
    app_id: str
    #: base URL with any path kept and no trailing slash.
    cube_base_url: str
    cube_api_key: str
    #: the base URL as logs and pages may show it (``proxy/urls.py``), worked out once with the tenant
    shown_url: str = ""
    #: seconds its load and dry-run answers are reused (0: the answer cache is off for it), and served stale after
    answer_ttl: float = 0.0
    answer_stale: float = 0.0

    def __repr__(self) -> str:
        return f"Tenant(project_id={self.project_id}, app_id={self.app_id!r}, cube_base_url={self.cube_base_url!r})"

    def endpoint(self, name: str) -> str:
        return f"{self.cube_base_url}/cubejs-api/v1/{name}"


def app_id_for(project_id: int) -> str:
    return f"gitlab_project_{project_id}"


def resolve_tenant(settings: Settings, project_id: int) -> Tenant | None:
    """The project's Cube target, or ``None`` when analytics is off or unconfigured for it."""
    global_settings = settings.product_analytics
    override = settings.projects.get(project_id)
    enabled = global_settings.enabled
    url = global_settings.cube_api_base_url
    key = global_settings.cube_api_key
    ttl, stale = global_settings.answer_ttl, global_settings.answer_stale
    if override is not None:
        if override.enabled is not None:
            enabled = override.enabled
        url = override.cube_api_base_url or url
        key = override.cube_api_key or key
        ttl = override.answer_ttl if override.answer_ttl is not None else ttl
        stale = override.answer_stale if override.answer_stale is not None else stale
    if not enabled or not url or not key:
        return None
    base = url.rstrip("/")
    return Tenant(project_id, app_id_for(project_id), base, key, redact_url(base), ttl, stale if ttl > 0 else 0.0)


class Tenants:
    """Each project's tenant, resolved once from the settings and then kept."""

    def __init__(self, settings: Settings, size: int = TENANT_CACHE_SIZE) -> None:
        self._settings = settings
        #: a plain dict, emptied when full: only projects GitLab let a caller reach get here
        self._known: dict[int, Tenant | None] = {}
        self._size = size

    def get(self, project_id: int) -> Tenant | None:
        try:
            return self._known[project_id]
        except KeyError:
            if len(self._known) >= self._size:
                self._known.clear()
            tenant = self._known[project_id] = resolve_tenant(self._settings, project_id)
            return tenant
