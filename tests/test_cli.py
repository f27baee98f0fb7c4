"""The command line: every settings problem at once, --check, PROXY_CONFIG, the dev tokens file."""

from tests.conftest import CUBE_KEY
from tests.processes import run_cli


def test_cli_reports_every_settings_problem(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nport = "x"\nworkers = -1\n[gitlab]\nurl = "nope"\n')
    result = run_cli("--config", str(config))
    assert result.returncode == 2
    assert "[server] port" in result.stderr and "[server] workers" in result.stderr and "[gitlab] url" in result.stderr


def test_cli_check_and_proxy_config_env(tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[product_analytics]\ncube_api_base_url = "http://127.0.0.1:4000"\ncube_api_key = "{CUBE_KEY}"\n'
    )
    result = run_cli("--check", env={"PROXY_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "settings are valid (1 worker(s) on 127.0.0.1:8080)" in result.stdout
    result = run_cli("--check", "--workers", "3", env={"PROXY_CONFIG": str(config)})
    assert "(3 worker(s)" in result.stdout
    result = run_cli("--check", "--workers", "0", env={"PROXY_CONFIG": str(config)})
    assert result.returncode == 2 and "[server] workers: must be greater than 0" in result.stderr


def test_cli_checks_the_dev_tokens_file(tmp_path):
    config = tmp_path / "dev.toml"
    config.write_text(f'[auth]\nbackend = "dev_tokens"\ndev_tokens_file = "{tmp_path / "missing.toml"}"\n')
    result = run_cli("--check", "--config", str(config))
    assert result.returncode == 2
    assert "cannot be read" in result.stderr
