"""Before traffic: nothing to serve is one line; ``--check --connect`` finds a wrong Cube key; ``--health``."""

from __future__ import annotations

import asyncio
import logging
import os

from proxy.__main__ import main
from proxy.runtime.preflight import connect, cube_targets, nothing_to_serve
from proxy.settings import settings_from_mapping
from tests.conftest import CUBE_KEY, QUERY, REPORTER
from tests.support.processes import proxy_process, run_cli
from tests.support.wire import LOAD


def test_with_nothing_to_serve_the_proxy_exits_at_once_with_one_line(tmp_path):
    result = run_cli(env={"PROXY_CONFIG": ""})  # no file, nothing in the environment
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Cube is configured" in lines[0] and "cube_api_base_url" in lines[0]
    missing = run_cli("--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "cannot read the settings file" in missing.stderr
    # the environment alone is a configuration
    env_only = run_cli(
        "--check",
        env={
            "PROXY_CONFIG": "",
            "PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL": "http://127.0.0.1:4000",
            "PROXY_PRODUCT_ANALYTICS__CUBE_API_KEY": CUBE_KEY,
        },
    )
    assert env_only.returncode == 0, env_only.stderr


def test_cube_targets_are_each_distinct_url_and_key():
    settings = settings_from_mapping(
        {
            "product_analytics": {"cube_api_base_url": "http://cube:4000/", "cube_api_key": CUBE_KEY},
            "projects": {
                "7": {"cube_api_base_url": "http://other:4000", "cube_api_key": "o" * 40},
                "8": {"cube_api_key": CUBE_KEY},  # the global target again
                "9": {"enabled": False, "cube_api_base_url": "http://off:4000"},
            },
        },
        {},
    )
    assert [(t.project_id, t.cube_base_url) for t in cube_targets(settings)] == [
        (0, "http://cube:4000"),
        (7, "http://other:4000"),
    ]
    assert nothing_to_serve(settings) is None
    assert nothing_to_serve(settings_from_mapping({}, {})) is not None


async def test_check_connect_finds_a_wrong_cube_key_and_an_unreachable_gitlab(make_settings, cube):
    good = make_settings()
    results = await connect(good)
    assert [ok for ok, _ in results] == [True, True], results
    assert len(cube.calls_to("meta")) == 1
    wrong = make_settings(projects={"7": {"cube_api_key": "w" * 40}}, gitlab={"url": "http://127.0.0.1:9"})
    results = await connect(wrong)
    assert [ok for ok, _ in results] == [False, True, False]
    assert "GitLab http://127.0.0.1:9: unreachable" in results[0][1]
    assert "project 7" in results[2][1] and "the key is not Cube's" in results[2][1]
    assert "w" * 40 not in str(results) and CUBE_KEY not in str(results)


async def test_check_connect_exit_status(tmp_path, cube, gitlab_url, cube_url, capsys):
    config = tmp_path / "proxy.toml"

    async def check(key: str) -> int:
        config.write_text(
            f'[gitlab]\nurl = "{gitlab_url}"\n[product_analytics]\ncube_api_base_url = "{cube_url}"\n'
            f'cube_api_key = "{key}"\n'
        )
        return await asyncio.to_thread(main, ["--check", "--connect", "--config", str(config)])

    assert await check(CUBE_KEY) == 0
    assert "ok   Cube" in capsys.readouterr().out
    assert await check("x" * 40) == 1
    assert "FAIL Cube" in capsys.readouterr().out


async def test_a_cube_refusing_the_key_at_run_time_is_logged_as_a_configuration_fault(
    make_settings, make_client, caplog
):
    client = await make_client(make_settings(product_analytics={"cube_api_key": "k" * 40}))
    caplog.set_level(logging.ERROR)
    resp = await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)
    assert resp.status == 400 and (await resp.json())["message"] == "Invalid token"
    faults = [r for r in caplog.records if getattr(r, "event", None) == "cube_key_refused"]
    assert len(faults) == 1 and faults[0].levelno == logging.ERROR and "k" * 40 not in caplog.text


async def test_health_follows_the_configured_port(tmp_path, gitlab_url, cube_url):
    async with proxy_process(tmp_path, gitlab_url, cube_url) as _:
        config = tmp_path / "proxy.toml"
        alive = await asyncio.to_thread(main, ["--health", "--config", str(config)])
        env = {**os.environ, "PROXY_SERVER__PORT": "1"}
        dead = await asyncio.to_thread(run_cli, "--health", "--config", str(config), env=env)
    assert alive == 0 and dead.returncode == 1
