"""One rule for showing a URL (``proxy/urls.py``), on every surface: --print-config, --check, the status page,
readiness, logs and settings errors; every URL form the settings accept (``unix://`` too) prints and serves."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import orjson
import pytest

from proxy.runtime.logs import JsonFormatter
from proxy.settings import SettingsError, settings_from_mapping
from proxy.urls import redact_url
from tests.conftest import SIGNING_KEY
from tests.support.redis_server import RedisServer

SECRETS = ("gl-secret", "cube-secret", "redis-secret", "acl-secret", "query-secret")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://proxy:gl-secret@gitlab.example.com/", "https://[REDACTED]@gitlab.example.com/"),
        ("http://cube:4000/?token=query-secret&x=1", "http://cube:4000/?token=[REDACTED]&x=1"),
        ("redis://:redis-secret@redis:6379/0", "redis://[REDACTED]@redis:6379/0"),
        (
            "rediss://user:redis-secret@redis:6380/0?ssl_password=acl-secret",
            "rediss://[REDACTED]@redis:6380/0?ssl_password=[REDACTED]",
        ),
        ("unix:///run/redis.sock?db=0&password=redis-secret", "unix:///run/redis.sock?db=0&password=[REDACTED]"),
        ("unix://user@/run/redis.sock", "unix://[REDACTED]@/run/redis.sock"),
        ("http://h:99999999/x?api_key=query-secret", "http://h:99999999/x?api_key=[REDACTED]"),  # no library parses it
        ("http://cube:4000", "http://cube:4000"),
    ],
)
def test_one_rule_for_every_url_form(url, shown):
    assert redact_url(url) == shown


def proxy_cli(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[gitlab]\nurl = "https://proxy:gl-secret@gitlab.example.com"\n'
        '[product_analytics]\ncube_api_base_url = "http://cube:4000/?token=query-secret"\n'
        'cube_api_key = "cube-secret-of-at-least-32-bytes-0000000"\n'
        '[projects.5]\ncube_api_base_url = "http://user:cube-secret@cube-5:4000"\n'
        '[redis]\nurl = "unix:///run/redis.sock?db=0&password=redis-secret"\n'
        f'username = "proxy"\npassword = "acl-secret"\nsigning_key = "{SIGNING_KEY}"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), *args],
        env={k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "CUBE_", "GITLAB_"))},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_print_config_and_check_show_no_secret_of_any_url(tmp_path):
    printed = proxy_cli(tmp_path, "--print-config")
    assert printed.returncode == 0, printed.stderr
    assert not [s for s in SECRETS if s in printed.stdout]
    data = orjson.loads(printed.stdout)
    assert data["redis"]["url"] == "unix:///run/redis.sock?db=0&password=[REDACTED]"
    assert data["redis"]["password"] == "[REDACTED]" and data["gitlab"]["url"].startswith("https://[REDACTED]@")
    checked = proxy_cli(tmp_path, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not [s for s in SECRETS if s in checked.stdout + checked.stderr]


def test_settings_errors_show_no_secret_of_a_url():
    with pytest.raises(SettingsError) as refused:
        settings_from_mapping(
            {
                "gitlab": {"url": "ftp://u:gl-secret@gitlab"},
                "product_analytics": {"cube_api_base_url": "gopher://u:cube-secret@cube"},
                "redis": {"url": "http://u:redis-secret@redis", "signing_key": SIGNING_KEY},
            },
            {},
        )
    text = str(refused.value)
    assert "[gitlab] url" in text and "[redis] url" in text and "cube_api_base_url" in text
    assert not [s for s in SECRETS if s in text]


def test_log_lines_show_no_secret_of_a_url():
    record = logging.LogRecord(
        "proxy", logging.ERROR, __file__, 1, "cannot reach %s", ("redis://:redis-secret@redis:6379/0",), None
    )
    line = JsonFormatter().format(record)
    assert "redis-secret" not in line and "redis://[REDACTED]@redis:6379/0" in line


@pytest.mark.handed_over  # status and readiness are aiohttp's
async def test_status_and_readiness_serve_a_unix_socket_redis_and_show_no_secret(make_client, make_settings, tmp_path):
    socket_path = tmp_path / "r" / "redis.sock"
    server = RedisServer(
        tmp_path / "r", ["requirepass redis-secret", f"unixsocket {socket_path}"], {"password": "redis-secret"}
    )
    server.start()
    try:
        settings = make_settings(
            redis={"url": f"unix://{socket_path}?db=0&password=redis-secret", "signing_key": SIGNING_KEY},
            projects={"7": {"cube_api_base_url": "http://user:cube-secret@127.0.0.1:1", "cube_api_key": "k" * 40}},
        )
        proxy = await make_client(settings)
        status = await proxy.get("/-/status", headers={"Accept": "application/json"})
        text = await status.text()
        assert status.status == 200, text
        assert not [s for s in SECRETS if s in text]
        report = orjson.loads(text)
        assert report["readiness"]["shared"] == "ok"  # the shared layer reached Redis through the socket
        assert report["settings"]["redis"]["url"] == f"unix://{socket_path}?db=0&password=[REDACTED]"
        ready = await proxy.get("/-/readiness")
        body = await ready.text()
        assert ready.status == 200 and "cube-secret" not in body
        assert orjson.loads(body)["cubes"] == {"up": 1, "down": 1} and "127.0.0.1" not in body  # names no Cube
        assert "http://[REDACTED]@127.0.0.1:1" in [cube["url"] for cube in report["cubes"]]  # the status page does
        page = await proxy.get("/-/status")
        assert page.status == 200 and not [s for s in SECRETS if s in await page.text()]
    finally:
        server.stop()


def test_redis_settings_from_the_environment_and_their_rules(tmp_path):
    password = tmp_path / "sentinel-password"
    password.write_text("acl-secret\n")
    s = settings_from_mapping(
        {},
        {
            "PROXY_REDIS__SENTINELS": "10.0.0.1:26379, [::1]:26380",
            "PROXY_REDIS__SERVICE_NAME": "analytics",
            "PROXY_REDIS__PASSWORD": "redis-secret",
            "PROXY_REDIS__SENTINEL_PASSWORD_FILE": str(password),
            "PROXY_REDIS__SIGNING_KEY": SIGNING_KEY,
            "PROXY_REDIS__DB": "2",
        },
    )
    redis = s.redis
    assert redis.enabled and redis.sentinels == ("10.0.0.1:26379", "[::1]:26380") and redis.db == 2
    assert (redis.password, redis.sentinel_password) == ("redis-secret", "acl-secret")
    with pytest.raises(SettingsError) as refused:
        settings_from_mapping(
            {
                "redis": {
                    "url": "redis://r:6379",
                    "sentinels": ["nope"],
                    "ca_file": str(tmp_path / "missing.pem"),
                    "cert_file": str(password),
                }
            },
            {},
        )
    text = str(refused.value)
    for problem in ("not both", "'nope' is not host:port", "service_name: required", "signing_key: required",
                    "ca_file: needs TLS", "cert_file and key_file"):  # fmt: skip
        assert problem in text, problem
