"""Which projects are served, and by which Cube (spec section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cachetools import LRUCache

from .settings import Settings

#: projects whose resolved tenant is kept (a tenant is a few short strings).
TENANT_CACHE_SIZE = 65_536


@dataclass(frozen=True)
class Tenant:
    project_id: int
    app_id: str
    #: base URL with any path kept and no trailing slash.
    cube_base_url: str
    cube_api_key: str = field(repr=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a tenant keys the coalescer, the meta cache and the signer: hash it once, not per lookup
        object.__setattr__(self, "_hash", hash((self.project_id, self.app_id, self.cube_base_url, self.cube_api_key)))

    def __hash__(self) -> int:
        return self._hash

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
    if override is not None:
        if override.enabled is not None:
            enabled = override.enabled
        url = override.cube_api_base_url or url
        key = override.cube_api_key or key
    if not enabled or not url or not key:
        return None
    return Tenant(project_id, app_id_for(project_id), url.rstrip("/"), key)


class Tenants:
    """Each project's tenant, resolved once from the settings and then kept (the same object)."""

    def __init__(self, settings: Settings, size: int = TENANT_CACHE_SIZE) -> None:
        self._settings = settings
        self._known: LRUCache[int, Tenant | None] = LRUCache(maxsize=size)

    def get(self, project_id: int) -> Tenant | None:
        try:
            return self._known[project_id]
        except KeyError:
            tenant = self._known[project_id] = resolve_tenant(self._settings, project_id)
            return tenant
