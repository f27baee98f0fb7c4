"""docker-compose.yml, as far as a machine without a Docker engine can take it: valid against the Compose
specification (check-jsonschema's vendored schema, offline), and running what `make run` runs: the same settings
file and dev tokens, the shipped tenant configuration and data model, the same demo data."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

from proxy.settings import settings_from_mapping
from stack.clickhouse import CUBE_PASSWORD, CUBE_USER, DEMO_CLICKHOUSE_SQL, SHIPPED_MODEL, demo_clickhouse_sql
from stack.localstack import CUBE_DIR, DEMO_SQL, demo_sql
from tests.support.manifests import COMPOSE, compose, mounts

ROOT = Path(__file__).resolve().parents[2]


def test_the_compose_file_is_valid_for_the_compose_specification() -> None:
    checked = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_file_compose_mounts_exists() -> None:
    for name, service in compose()["services"].items():
        for container, host in mounts(service).items():
            assert host.exists(), f"{name}: {host} (mounted at {container}) is missing"


def test_the_proxy_runs_make_runs_settings_but_for_where_the_services_are() -> None:
    services = compose()["services"]
    for name in ("proxy", "proxy-fleet", "proxy-clickhouse"):
        proxy = services[name]
        files = mounts(proxy)
        env = {k: str(v) for k, v in proxy["environment"].items()}
        config = files[env["PROXY_CONFIG"]]
        assert config == ROOT / "config" / "local.toml"  # stack/run.py's default: what `make run` serves with
        raw = tomllib.loads(config.read_text())
        dev_tokens = Path(proxy["working_dir"]) / raw["auth"]["dev_tokens_file"]
        assert files[str(dev_tokens)] == ROOT / raw["auth"]["dev_tokens_file"]
        raw["auth"]["dev_tokens_file"] = str(ROOT / raw["auth"]["dev_tokens_file"])
        as_make_run = settings_from_mapping(raw, {})
        in_compose = settings_from_mapping(raw, {k: v for k, v in env.items() if k != "PROXY_CONFIG"})
        changed = {
            f"{section.name}.{f.name}"
            for section in dataclasses.fields(in_compose)
            if dataclasses.is_dataclass(getattr(in_compose, section.name))
            for f in dataclasses.fields(getattr(in_compose, section.name))
            if getattr(getattr(in_compose, section.name), f.name) != getattr(getattr(as_make_run, section.name), f.name)
        }
        expected = {"server.host", "product_analytics.cube_api_base_url", "auth.allow_dev_tokens_off_loopback"}
        if name == "proxy-fleet":
            expected |= {"redis.url", "redis.signing_key"}
        assert changed == expected, changed
        cube = "cube-clickhouse" if name == "proxy-clickhouse" else "cube"
        assert in_compose.product_analytics.cube_api_base_url == f"http://{cube}:4000"
        assert cube in proxy["depends_on"]


def test_cube_and_postgres_run_the_stacks_files_and_data() -> None:
    services = compose()["services"]
    cube, postgres = services["cube"], services["postgres"]
    cube_files = mounts(cube)
    assert cube_files["/cube/conf/cube.js"] == ROOT / "deploy" / "kubernetes" / "base" / "cube.js"
    assert cube_files["/cube/conf/model"] == CUBE_DIR / "model"  # stack/cube/server.js's schemaPath
    assert cube["image"] == "cubejs/cube:v0.33.65"  # the version stack/cube's lock pins and the tests run
    raw = tomllib.loads((ROOT / "config" / "local.toml").read_text())
    env = cube["environment"]
    assert env["CUBEJS_API_SECRET"] == raw["product_analytics"]["cube_api_key"]
    assert (env["CUBEJS_DB_HOST"], env["CUBEJS_DB_NAME"]) == ("postgres", postgres["environment"]["POSTGRES_DB"])
    assert env["CUBEJS_DB_PASS"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert mounts(postgres)["/docker-entrypoint-initdb.d/demo.sql"] == DEMO_SQL


def test_the_demo_data_file_is_what_the_stack_generates() -> None:
    """stack/demo.sql is written by `python -m stack.localstack`; the local stack loads the same file."""
    assert DEMO_SQL.read_text() == demo_sql()

    assert DEMO_CLICKHOUSE_SQL.read_text() == demo_clickhouse_sql()


def test_the_clickhouse_profile_runs_the_shipped_files_and_names_no_database() -> None:
    services = compose()["services"]
    cube, clickhouse = services["cube-clickhouse"], services["clickhouse"]
    assert {cube["profiles"][0], clickhouse["profiles"][0], services["proxy-clickhouse"]["profiles"][0]} == {
        "clickhouse"
    }
    cube_files = mounts(cube)
    assert cube_files["/cube/conf/cube.js"] == ROOT / "deploy" / "kubernetes" / "base" / "cube.js"
    assert cube_files["/cube/conf/model"] == SHIPPED_MODEL  # what the Kubernetes component ships
    assert cube["image"] == services["cube"]["image"]
    env = cube["environment"]
    assert (env["CUBEJS_DB_TYPE"], env["CUBEJS_DB_HOST"], env["CUBEJS_DB_PORT"]) == ("clickhouse", "clickhouse", "8123")
    assert "CUBEJS_DB_NAME" not in env
    assert (env["CUBEJS_DB_USER"], env["CUBEJS_DB_PASS"]) == (CUBE_USER, CUBE_PASSWORD)
    assert (clickhouse["environment"]["CLICKHOUSE_USER"], clickhouse["environment"]["CLICKHOUSE_PASSWORD"]) == (
        CUBE_USER,
        CUBE_PASSWORD,
    )
    assert mounts(clickhouse)["/docker-entrypoint-initdb.d/demo.sql"] == DEMO_CLICKHOUSE_SQL
