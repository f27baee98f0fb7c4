import textwrap

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
    """config/proxy.example.toml is where the README sends readers for every key: it must stay complete and true."""
    import dataclasses
    import tomllib
    from pathlib import Path

    from proxy.settings import _SECTIONS

    example = tomllib.loads((Path(__file__).parent.parent / "config" / "proxy.example.toml").read_text())
    defaults = Settings()
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            if default is None:
                continue  # unset by default (the Cube URL and key): the file shows an example value
            assert f.name in example[section], f"[{section}] {f.name} is missing from the example file"
            assert example[section][f.name] == default, f"[{section}] {f.name}: the example says another default"


@pytest.mark.parametrize("key", ["\u0661", "\uff11", "\u00b2", "0"])
def test_project_override_keys_are_ascii_digits(key):
    """[projects.<id>] keys in other scripts' digits are refused, not read as another project."""
    with pytest.raises(SettingsError, match="the key must be a numeric project id"):
        settings_from_mapping({"projects": {key: {"enabled": False}}}, {})
