"""docs/api.md stays true: every route, error message and claim the code has, the document names."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import __version__
from proxy.__main__ import main
from proxy.cube.error_map import DATABASE_NOT_FOUND
from proxy.cube.signing import security_claims
from proxy.cube.tenants import Tenant
from proxy.errors import (
    access_denied,
    gitlab_unavailable,
    insufficient_scope,
    not_enabled,
    project_not_found,
    unauthorized,
)
from proxy.settings import settings_from_mapping
from proxy.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.md").read_text()


def test_every_route_is_in_the_contract() -> None:
    app = create_app(settings_from_mapping({}, {}))
    routes = {resource.canonical for resource in app.router.resources()}
    assert routes and not {route for route in routes if route not in API}


def test_every_error_message_is_in_the_contract() -> None:
    for error in (unauthorized(), access_denied(), not_enabled(), project_not_found(), gitlab_unavailable(5)):
        assert error.body["message"] in API and str(error.status) in API
    assert insufficient_scope("api").body["error"] in API
    assert DATABASE_NOT_FOUND["message"] in API
    assert "query is missing" in API


def test_every_claim_of_the_security_context_is_in_the_contract() -> None:
    claims = security_claims(Tenant(1, "gitlab_project_1", "http://cube", "k"), "gitlab.example.com", 0, 180, None)
    assert all(f"`{claim}`" in API for claim in claims)


def test_the_readme_points_at_the_contract_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/api.md)" in readme and "../shared" not in readme


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"product-analytics-proxy {__version__}"
    assert __version__ != "0+unknown"
