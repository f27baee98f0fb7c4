"""``.gitlab-ci.yml``: valid against GitLab's CI schema (check-jsonschema's vendored copy, offline), and running
what this repository promises: `make lint`, the README's test command, and the image from its Dockerfile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".gitlab-ci.yml"


def test_the_pipeline_is_valid_for_gitlab() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    checked = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.gitlab-ci", str(CI)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_pipeline_runs_lint_the_readmes_test_command_and_builds_the_image() -> None:
    jobs = yaml.safe_load(CI.read_text())
    assert jobs["lint"]["script"] == ["make lint"]
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and jobs["test"]["script"] == ["make test"]
    build = " ".join(jobs["build-image"]["script"])
    assert "/kaniko/executor" in build and '--dockerfile "$CI_PROJECT_DIR/Dockerfile"' in build
    assert '--build-arg "REVISION=$CI_COMMIT_SHA"' in build  # build_info{revision} names the commit
