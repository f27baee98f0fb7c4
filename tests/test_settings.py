import os
import subprocess
import sys
import textwrap

import orjson
import pytest

from proxy.cube.tenants import resolve_tenant
from proxy.settings import Settings, SettingsError, load_settings, settings_from_mapping

KEY = "k" * 32


def test_defaults_are_documented_values():
    s = settings_from_mapping({}, {})
    assert s == Settings()
    assert s.server.port == 8080
    assert s.gitlab.min_access_level == 20
    assert s.product_analytics.jwt_ttl == 180
    assert s.cube.continue_wait_budget == 25.0
    assert s.cube.meta_cache_ttl == 60.0
    assert s.limits.max_body_bytes == 1024 * 1024


def test_reads_the_issue_example_file(tmp_path):
    path = tmp_path / "proxy.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [server]
            host = "127.0.0.1"
            port = 8081

            [gitlab]
            url = "https://gitlab.example.com"

            [product_analytics]
            enabled = true
            cube_api_base_url = "http://127.0.0.1:4000"
            cube_api_key = "{KEY}"

            [projects.42]
            enabled = false

            [projects.7]
            cube_api_base_url = "http://cube-b:4000/tenant-b"
            cube_api_key = "{"b" * 40}"
            """
        )
    )
    s = load_settings(path, env={})
    assert s.server.port == 8081
    assert resolve_tenant(s, 42) is None
    tenant = resolve_tenant(s, 7)
    assert tenant is not None
    assert tenant.endpoint("load") == "http://cube-b:4000/tenant-b/cubejs-api/v1/load"
    assert tenant.cube_api_key == "b" * 40
    default = resolve_tenant(s, 1)
    assert default is not None and default.app_id == "gitlab_project_1"


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "proxy.toml"
    path.write_text('[server]\nport = 1\n[gitlab]\nurl = "http://a"\n')
    env = {
        "PROXY_HOST": "127.0.0.2",
        "PROXY_PORT": "9999",
        "GITLAB_URL": "http://gitlab.local",
        "CUBE_API_BASE_URL": "http://cube.local:4000",
        "CUBE_API_KEY": KEY,
    }
    s = load_settings(path, env=env)
    assert (s.server.host, s.server.port) == ("127.0.0.2", 9999)
    assert s.gitlab.url == "http://gitlab.local"
    assert s.product_analytics.cube_api_base_url == "http://cube.local:4000"
    assert s.product_analytics.cube_api_key == KEY


def test_every_problem_is_reported_at_once():
    raw = {
        "server": {"port": "eighty", "workers": 0, "keepalive_timeout": 0, "colour": "blue"},
        "gitlab": {"url": "ftp://nope", "cache_ttl": -1},
        "product_analytics": {"cube_api_base_url": "not a url", "cube_api_key": "short"},
        "cube": {"max_whole_bytes": 0},
        "projects": {"abc": {"enabled": False}, "7": {"enabled": "yes"}},
        "mystery": {},
    }
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(raw, {"PROXY_PORT": "x"})
    text = str(info.value)
    for fragment in [
        "[server] port: must be a number",
        "[server] workers: must be greater than 0",
        "[server] keepalive_timeout: must be greater than 0",
        "[server] colour: unknown setting",
        "[gitlab] url: must be an http(s) URL",
        "[gitlab] cache_ttl: must not be negative",
        "cube_api_base_url: must be an http(s) URL",
        "cube_api_key: must be at least 32 bytes",
        "[cube] max_whole_bytes: must be greater than 0",
        "[projects.abc]: the key must be a numeric project id",
        "[projects.7] enabled: must be true or false",
        "[mystery]: unknown section",
    ]:
        assert fragment in text, fragment
    assert len(info.value.problems) >= 10


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, env={})


def test_dev_tokens_refused_off_loopback():
    with pytest.raises(SettingsError, match="allow_dev_tokens_off_loopback"):
        settings_from_mapping({"auth": {"backend": "dev_tokens"}, "server": {"host": "0.0.0.0"}}, {})
    s = settings_from_mapping(
        {"auth": {"backend": "dev_tokens", "allow_dev_tokens_off_loopback": True}, "server": {"host": "0.0.0.0"}}, {}
    )
    assert s.auth.backend == "dev_tokens"
    assert (
        settings_from_mapping({"auth": {"backend": "dev_tokens"}, "server": {"host": "::1"}}, {}).server.host == "::1"
    )


def test_wrong_kinds_of_values():
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(
            {
                "server": {"port": 70000, "log_format": "xml", "log_level": "loud", "host": 5},
                "auth": {"backend": "ldap"},
                "cube": {"buffer_limit": 1.5},
                "projects": {"3": "off"},
                "limits": "none",
            },
            {},
        )
    text = str(info.value)
    assert "port: must be at most 65535" in text
    assert "log_format" in text and "log_level" in text
    assert "[server] host: must be a string" in text
    assert "[auth] backend: must be one of" in text
    assert "buffer_limit: must be a whole number" in text
    assert "[projects.3]: must be a table" in text
    assert "[limits]: must be a table" in text


def test_analytics_off_or_unconfigured_serves_nothing():
    assert resolve_tenant(settings_from_mapping({}, {}), 1) is None
    off = settings_from_mapping(
        {"product_analytics": {"enabled": False, "cube_api_base_url": "http://c", "cube_api_key": KEY}}, {}
    )
    assert resolve_tenant(off, 1) is None
    only_one = settings_from_mapping(
        {
            "product_analytics": {"enabled": False},
            "projects": {"9": {"enabled": True, "cube_api_base_url": "http://c/", "cube_api_key": KEY}},
        },
        {},
    )
    tenant = resolve_tenant(only_one, 9)
    assert tenant is not None and tenant.cube_base_url == "http://c"
    assert resolve_tenant(only_one, 1) is None


def test_a_project_resolves_to_the_same_tenant_object_every_time() -> None:
    from proxy.cube.tenants import Tenants

    s = settings_from_mapping(
        {
            "product_analytics": {"cube_api_base_url": "http://c", "cube_api_key": "k" * 32},
            "projects": {"9": {"enabled": False}},
        },
        {},
    )
    tenants = Tenants(s, size=2)
    first = tenants.get(1)
    assert first is not None and tenants.get(1) is first
    assert tenants.get(9) is None and tenants.get(9) is None
    assert hash(first) == hash(resolve_tenant(s, 1)) and first == resolve_tenant(s, 1)


def test_the_example_file_has_every_key_with_its_default():
    """config/proxy.example.toml is the example every setting has a line in: it must stay complete and true."""
    import dataclasses
    import tomllib
    from pathlib import Path

    from proxy.settings import SECTIONS

    example = tomllib.loads((Path(__file__).parent.parent / "config" / "proxy.example.toml").read_text())
    defaults = Settings()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            if default is None:
                continue  # unset by default (the Cube URL and key): the file shows an example value
            assert f.name in example[section], f"[{section}] {f.name} is missing from the example file"
            shown = example[section][f.name]
            assert (tuple(shown) if isinstance(shown, list) else shown) == default, (
                f"[{section}] {f.name}: the example says another default"
            )


@pytest.mark.parametrize("key", ["\u0661", "\uff11", "\u00b2", "0"])
def test_project_override_keys_are_ascii_digits(key):
    """[projects.<id>] keys in other scripts' digits are refused, not read as another project."""
    with pytest.raises(SettingsError, match="the key must be a numeric project id"):
        settings_from_mapping({"projects": {key: {"enabled": False}}}, {})


def test_every_setting_comes_from_the_environment_by_one_rule(tmp_path):
    """PROXY_<SECTION>__<KEY> for every key of every section, PROXY_PROJECTS__<ID>__<KEY> for a project."""
    import dataclasses

    from proxy.settings import SECTIONS

    defaults = Settings()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"PROXY_{section.upper()}__{f.name.upper()}"  # the rule names every key
    env = {
        "PROXY_CUBE__READ_TIMEOUT": "7.5",
        "PROXY_SERVER__FAST_LANE": "false",
        "PROXY_LIMITS__RATE_LIMIT_BURST": "9",
        "PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL": "http://cube:4000",
        "PROXY_PRODUCT_ANALYTICS__CUBE_API_KEY": "k" * 32,
        "PROXY_PROJECTS__7__ENABLED": "false",
        "PATH": "/usr/bin",
    }
    s = settings_from_mapping(
        {"cube": {"read_timeout": 30.0}, "projects": {"7": {"cube_api_base_url": "http://b"}}}, env
    )
    assert (s.cube.read_timeout, s.server.fast_lane, s.limits.rate_limit_burst) == (7.5, False, 9)
    assert s.projects[7].enabled is False and s.projects[7].cube_api_base_url == "http://b"
    assert s.server.port == defaults.server.port
    with pytest.raises(SettingsError, match=r"\[cube\] read_timout: unknown setting") as bad:  # a typo is named
        settings_from_mapping({}, {"PROXY_CUBE__READ_TIMOUT": "1", "PROXY_NOPE__X": "1"})
    assert "PROXY_NOPE__X: not a setting" in str(bad.value)
    with pytest.raises(SettingsError, match=r"\[cube\] read_timeout"):
        settings_from_mapping({}, {"PROXY_CUBE__READ_TIMEOUT": "soon"})


def test_precedence_is_command_line_then_environment_then_file(tmp_path):
    from proxy.__main__ import main

    config = tmp_path / "proxy.toml"
    config.write_text("[server]\nworkers = 2\nport = 9001\n[cube]\nread_timeout = 11.0\n")
    env = {"PROXY_SERVER__WORKERS": "3", "PROXY_CUBE__READ_TIMEOUT": "12"}
    s = load_settings(config, env)
    assert (s.server.workers, s.server.port, s.cube.read_timeout) == (3, 9001, 12.0)  # environment over file
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), "--workers", "4", "--print-config"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    printed = orjson.loads(out)
    assert printed["server"]["workers"] == 4 and printed["cube"]["read_timeout"] == 12.0  # command line over both
    assert main is not None


def test_a_cube_key_from_a_file_and_print_config_redacts_every_key(tmp_path):
    key_file = tmp_path / "cube-key"
    key_file.write_text("f" * 40 + "\n")  # as a mounted secret holds it, with a trailing newline
    project_key = tmp_path / "project-key"
    project_key.write_text("p" * 40)
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[product_analytics]\ncube_api_base_url = "http://cube:4000"\ncube_api_key_file = "{key_file}"\n'
        f'[projects.5]\ncube_api_key_file = "{project_key}"\n'
    )
    s = load_settings(config, {})
    assert s.product_analytics.cube_api_key == "f" * 40 and s.projects[5].cube_api_key == "p" * 40
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), "--print-config"],
        env={k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "CUBE_", "GITLAB_"))},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "f" * 40 not in out and "p" * 40 not in out
    printed = orjson.loads(out)
    assert printed["product_analytics"]["cube_api_key"] == "[REDACTED]" == printed["projects"]["5"]["cube_api_key"]
    with pytest.raises(SettingsError, match="cannot read") as bad:
        settings_from_mapping({"product_analytics": {"cube_api_key_file": str(tmp_path / "missing")}}, {})
    assert "missing" in str(bad.value)
    with pytest.raises(SettingsError, match="not both"):
        settings_from_mapping({"product_analytics": {"cube_api_key": "x" * 40, "cube_api_key_file": str(key_file)}}, {})


def test_the_rules_are_on_the_fields_and_every_secret_is_marked_one():
    """A setting's bound and secrecy are its field's metadata (``model.setting``), read by the checks, the redaction
    and configuration.md: a field named like a secret that is not marked one would be shown by --print-config."""
    import dataclasses
    import re

    from proxy.settings.model import SECTIONS, ProjectOverride

    for cls in (*SECTIONS.values(), ProjectOverride):
        for f in dataclasses.fields(cls):
            if re.search(r"(key|password|secret)$", f.name) and not f.name.endswith("_file"):
                assert f.metadata.get("secret") is True, f"{cls.__name__}.{f.name} is not marked secret"
    with pytest.raises(SettingsError) as refused:
        settings_from_mapping(
            {"cube": {"pool_size": 0, "answer_cache_tenant_share": 2.0}, "redis": {"lock_ttl": 0}}, {}
        )
    problems = refused.value.problems
    assert "[cube] pool_size: must be greater than 0, not 0" in problems
    assert "[cube] answer_cache_tenant_share: must be more than 0 and at most 1, not 2.0" in problems
    assert "[redis] lock_ttl: must be greater than 0, not 0.0" in problems
