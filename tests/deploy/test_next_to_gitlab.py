"""docs/deployment.md's "Next to GitLab" block is the one shipped in deploy/gitlab/, which the browser tests' nginx
runs; the Ingress for the GitLab chart is valid and routes the same path to the proxy's Service."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import yaml

from tests.stack.browser import GITLAB_SNIPPET, SNIPPET_UPSTREAM
from tests.support.manifests import KUBERNETES

ROOT = Path(__file__).resolve().parents[2]


def test_the_deployment_page_shows_the_shipped_nginx_block_the_browser_tests_run() -> None:
    snippet = GITLAB_SNIPPET.read_text().rstrip()
    page = (ROOT / "docs" / "deployment.md").read_text()
    assert f"```nginx\n{snippet}\n```" in page
    assert SNIPPET_UPSTREAM in snippet  # what the browser tests' nginx replaces with the proxy it started


def test_the_ingress_routes_the_same_path_to_the_proxys_service() -> None:
    ingress = yaml.safe_load((ROOT / "deploy" / "gitlab" / "ingress.yaml").read_text())
    kubernetes_validate.validate(ingress, KUBERNETES, strict=True)
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    location = re.search(r"location ~ (\S+) \{", GITLAB_SNIPPET.read_text())
    assert location is not None and location.group(1).lstrip("^") == path["path"]
    assert path["backend"]["service"] == {"name": "product-analytics-proxy", "port": {"name": "http"}}
