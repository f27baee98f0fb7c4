"""Which projects are served, and by which Cube (spec section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .settings import Settings


@dataclass(frozen=True)
class Tenant:
    project_id: int
    app_id: str
    #: base URL with any path kept and no trailing slash.
    cube_base_url: str
    cube_api_key: str = field(repr=False)

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
