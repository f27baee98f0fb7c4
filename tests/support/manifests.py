"""The deployment files as the tests read them: the Kubernetes manifests rendered, the compose file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"


KUBERNETES = "1.33.0"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay: the manifests exactly as they would be applied."""
    command = ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The rendered objects by (kind, name), generated names without their hash suffix."""
    found = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap":
            name = re.sub(r"-[a-z0-9]{10}$", "", name)
        found[(doc["kind"], name)] = doc
    return found


COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Each container path a service mounts, and the file or folder of this repository it is."""
    found = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        found[container] = (ROOT / host).resolve()
    return found
