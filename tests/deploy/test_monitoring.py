"""The monitoring shipped with the deployment: alert rules that promtool checks and unit-tests, a PodMonitor that
scrapes the port the pods name, and a Grafana dashboard, all naming only metrics that exist (docs/metrics.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.manifests import DEPLOY, by_kind, load, render
from tests.support.metrics import documented

MONITORING = DEPLOY / "components" / "monitoring"
SHIPPED = DEPLOY.parent / "monitoring"
#: a metric name in a PromQL expression: ours, or a process metric of ours
_NAME = re.compile(r"\b(pa_proxy_[a-z_]+|process_[a-z_]+)\b")


def base_name(name: str) -> str:
    """The documented name of a series name (a histogram's _bucket, _count and _sum are its parts)."""
    return re.sub(r"_(bucket|count|sum)$", "", name)


def rules() -> dict[str, Any]:
    return load(MONITORING / "prometheusrule.yaml")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool (Debian's prometheus package) is installed by make test-tools and .ci/run"
    return found


def test_the_alert_rules_pass_promtools_check_and_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "alerts.rules.yaml").write_text(yaml.safe_dump(rules()["spec"]))
    shutil.copy(SHIPPED / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    checked = subprocess.run([promtool(), "check", "rules", "alerts.rules.yaml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", "alerts.test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in rules()["spec"]["groups"] for rule in group["rules"]}
    tested_alerts = set(re.findall(r"alertname: (\w+)", (SHIPPED / "alerts.test.yaml").read_text()))
    assert alerts == tested_alerts  # every alert has a unit test


def metric_names(text: str) -> set[str]:
    return {base_name(name) for name in _NAME.findall(text)}


@pytest.mark.parametrize("where", ["rules", "dashboard"])
def test_rules_and_dashboard_name_only_documented_metrics(where: str) -> None:
    if where == "rules":
        text = "\n".join(rule["expr"] for group in rules()["spec"]["groups"] for rule in group["rules"])
    else:
        dashboard = json.loads((SHIPPED / "grafana-dashboard.json").read_text())
        text = "\n".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
        assert dashboard["uid"] and len(dashboard["panels"]) >= 10
    names = metric_names(text)
    assert names and names <= set(documented()), names - set(documented())


def test_the_podmonitor_scrapes_the_port_the_pods_name(tmp_path: Path) -> None:
    # the example overlay with the monitoring component, rendered as a user would compose them
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY / "overlays" / "example", tmp_path)],  # kustomize: relative
                "components": [os.path.relpath(MONITORING, tmp_path)],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    found = by_kind([doc for doc in yaml.safe_load_all(out.stdout) if doc])
    monitor = found[("PodMonitor", "product-analytics-proxy")]["spec"]
    pod = found[("Deployment", "product-analytics-proxy")]["spec"]["template"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["podMetricsEndpoints"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports and endpoint["path"] == "/-/metrics"
    assert ("PrometheusRule", "product-analytics-proxy") in found
    assert render("example")  # the example itself renders without the component
