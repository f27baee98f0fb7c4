"""docker-compose.yml's Cube services run as written, on this machine's PostgreSQL and ClickHouse.

No Docker engine runs here: what can be run of the file is Cube's own server (``cubejs-server``, what the
``cubejs/cube`` image runs, from ``stack/cube``'s install) in a folder laid out as the service's mounts say,
with the service's environment. This found that Cube 0.33 looked for the mounted model in ``schema/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.cube.error_map import map_cube_error
from stack.localstack import CUBE_DIR, free_port, stop_process, wait_until
from tests.stack.conftest import NO_DATABASE
from tests.support.manifests import compose, mounts


@pytest.mark.parametrize(("name", "store"), [("cube", "stack"), ("cube-clickhouse", "clickhouse_stack")])
async def test_composes_cube_as_written_keeps_projects_apart(request, tmp_path, name, store):
    """docker-compose.yml's Cube services, each run as its image would run it: Cube's own server in a folder laid
    out as its mounts say, with its environment (the database's host and port moved to this machine's, said here),
    on the demo data its database service loads: each project its own rows, a project without data refused."""
    stack = request.getfixturevalue(store)
    service = compose()["services"][name]
    conf = tmp_path / "cube" / "conf"
    conf.mkdir(parents=True)
    for inside, source in mounts(service).items():
        target = conf / Path(inside).relative_to("/cube/conf")
        shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    port = free_port()
    local = stack.store.cube_env()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUBEJS_")}
    env |= {k: str(v) for k, v in service["environment"].items()}
    env |= {"CUBEJS_DB_HOST": local["CUBEJS_DB_HOST"], "CUBEJS_DB_PORT": local["CUBEJS_DB_PORT"], "PORT": str(port)}
    log = tmp_path / "cube.log"
    cube = subprocess.Popen(
        ["node", str(CUBE_DIR / "node_modules" / ".bin" / "cubejs-server")],
        cwd=conf, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), f"compose's {name} (log: {log})", 90, cube)
        secret = env["CUBEJS_API_SECRET"]
        async with aiohttp.ClientSession() as session:
            for project, expected in (
                (1, stack.rows[1]),
                (2, stack.rows[2]),
                (NO_DATABASE, None),
            ):
                token = jwt.encode({"appId": f"gitlab_project_{project}", "exp": int(time.time()) + 60}, secret)
                body = await _load_until_done(session, url, token)
                if expected is None:
                    assert map_cube_error(body["error"])[0] == 404, body["error"]
                else:
                    assert sum(int(r["TrackedEvents.count"]) for r in body.get("data", [])) == expected, body
    finally:
        stop_process(cube, 15)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except OSError:
        return False


async def _load_until_done(session: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    for _ in range(20):  # Cube's client asks again on Continue wait; a bounded number of rounds
        async with session.post(
            f"{url}/cubejs-api/v1/load", json={"query": {"measures": ["TrackedEvents.count"]}},
            headers={"Authorization": token},
        ) as resp:  # fmt: skip
            body = await resp.json()
        if body != {"error": "Continue wait"}:
            return dict(body)
    raise AssertionError("Cube kept saying Continue wait")
