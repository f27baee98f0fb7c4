"""The image's install, done as the Dockerfile does it (no Docker engine runs here), then the proxy started from it.

A fresh virtualenv gets the lock file's dependencies (every hash checked, nothing
resolved), then the package without dependencies: if the lock lacks something the
package imports, the proxy fails to start here as it would in the image. It is started
with a config file mounted where the image's ``PROXY_CONFIG`` points, and must answer its
health check; with no file there, it must exit at once with one line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from stack.localstack import free_port, wait_until
from tests.conftest import CUBE_KEY
from tests.support.processes import kill_group

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()

pytestmark = pytest.mark.stack  # slow: a virtualenv and a real install


def image_config_path() -> str:
    found = re.search(r"PROXY_CONFIG=(/\S+)", DOCKERFILE)
    assert found, "the Dockerfile names where the config file is mounted"
    return found.group(1)


def test_the_dockerfile_installs_the_lock_then_the_package_and_bakes_no_setting():
    lock_step = DOCKERFILE.index("--require-hashes --no-deps -r /tmp/requirements.lock")
    assert (
        lock_step < DOCKERFILE.index("COPY proxy ./proxy") < DOCKERFILE.index("pip install --no-cache-dir --no-deps .")
    )
    assert "USER 10001:10001" in DOCKERFILE and "STOPSIGNAL SIGTERM" in DOCKERFILE
    assert "COPY config" not in DOCKERFILE  # no configuration inside the image
    settings_env = re.findall(r"\b(PROXY_(?!CONFIG\b)\w+|GITLAB_URL|CUBE_API_\w+)=", DOCKERFILE.split("ENTRYPOINT")[0])
    assert settings_env == [], f"the image sets settings a mounted file could not override: {settings_env}"
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE


@pytest.mark.long  # a fresh virtualenv and a real install: about 25 s (make test-long)
def test_installed_as_the_image_installs_it_the_proxy_starts_from_a_mounted_config(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [
        str(env_dir / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements.lock")], check=True)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, cwd=tmp_path)
    command = str(env_dir / "bin" / "product-analytics-proxy")
    mounted = tmp_path / image_config_path().lstrip("/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env.update({"PROXY_CONFIG": str(mounted), "PATH": f"{env_dir / 'bin'}:{env['PATH']}"})

    absent = subprocess.run([command], env=env, capture_output=True, text=True, timeout=60)
    assert absent.returncode == 2 and len(absent.stderr.strip().splitlines()) == 1
    assert str(mounted) in absent.stderr

    port = free_port()
    mounted.parent.mkdir(parents=True)
    mounted.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\ndrain_delay = 0\n'
        f'[product_analytics]\ncube_api_base_url = "http://127.0.0.1:9"\ncube_api_key = "{CUBE_KEY}"\n'
    )
    proc = subprocess.Popen(
        [command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True
    )
    try:
        health = [command, "--health"]  # the image's HEALTHCHECK
        wait_until(lambda: subprocess.run(health, env=env, timeout=30).returncode == 0, "the installed proxy", 60, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        kill_group(proc.pid)
        proc.wait()
    assert sys.version_info >= (3, 11)


def test_the_lock_pins_every_dependency_with_hashes():
    import tomllib

    from packaging.requirements import Requirement

    lock = (ROOT / "requirements.lock").read_text()
    pinned = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in lock.splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in map(Requirement, declared):
        assert requirement.name.lower().replace("_", "-") in pinned, f"{requirement.name} is not in the lock"
    blocks = lock.split("==")[1:]
    assert blocks and all("--hash=sha256:" in block for block in blocks)
