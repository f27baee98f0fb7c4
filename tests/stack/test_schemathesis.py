"""Schemathesis, a tool nobody here wrote, against the real stack (a proxy process in front of Cube on
PostgreSQL), from the OpenAPI document alone: every generated request gets a documented status and a body the
document describes, never a 5xx of the proxy's own, never a hang. Bounded and seeded in `make test`; `make fuzz`
runs it longer (``SCHEMATHESIS_EXAMPLES``).

Two inputs are fixed where the API needs data that exists: the project (a demo project, or the path of one) and
the credential (a dev token). One check is left out: Schemathesis' "a schema-valid request is accepted", since
a query the schema allows may name members the tenant's model lacks, which Cube refuses with a 400 that says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.web.openapi import document
from stack.localstack import free_port
from tests.stack.conftest import STACK_KEY
from tests.support.processes import kill_group

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dev-maintainer-token-0001"
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15"))


#: a generated sweep of the API on the real stack: the long tail, run by make test-long (and CI)
pytestmark = pytest.mark.long


def narrowed(path: Path) -> Path:
    """The document with the project parameter narrowed to the demo projects (the test data that exists)."""
    doc = document()
    doc["components"]["parameters"]["Project"]["schema"] = {"enum": ["1", "2", "demo%2Fweb-shop", "demo%2Fblog"]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def test_schemathesis_finds_nothing_on_the_real_stack(stack, tmp_path):
    port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndrain_delay = 0\nlog_level = "WARNING"\n'
        '[gitlab]\nurl = "http://gitlab.localhost"\n'
        f'[auth]\nbackend = "dev_tokens"\ndev_tokens_file = "{ROOT / "config" / "dev-tokens.toml"}"\n'
        f'[product_analytics]\nenabled = true\ncube_api_base_url = "{stack.cube.url}"\ncube_api_key = "{STACK_KEY}"\n'
        "[cube]\ncontinue_wait_budget = 2.0\n[limits]\nrate_limit = 0.0\n"
    )
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--config", str(config)], stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        health = subprocess.run([sys.executable, "-m", "proxy", "--config", str(config), "--health"], check=False)
        for _ in range(100):
            if health.returncode == 0:
                break
            await asyncio.sleep(0.1)  # the proxy's start, polled (bounded)
            health = subprocess.run([sys.executable, "-m", "proxy", "--config", str(config), "--health"], check=False)
        assert health.returncode == 0
        command = [
            str(Path(sys.executable).parent / "schemathesis"), "run", str(narrowed(tmp_path / "openapi.yaml")),
            "--url", f"http://127.0.0.1:{port}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-examples", str(EXAMPLES), "--seed", "4711", "--generation-deterministic",
            "--request-timeout", "20", "-H", f"PRIVATE-TOKEN: {TOKEN}", "--no-color",
        ]  # fmt: skip
        run = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(30)
        finally:
            kill_group(proxy.pid)
