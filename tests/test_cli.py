"""The command line: every settings problem at once, --check, PROXY_CONFIG, the dev tokens file."""

from tests.conftest import CUBE_KEY
from tests.support.processes import run_cli


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


def test_check_refuses_durations_nothing_downstream_can_take(tmp_path):
    """``inf`` made every load a 500 with Redis, ``nan`` turned the answer cache off silently, ``1e300`` broke Redis's
    writes; ``--check`` called all three valid."""
    config = tmp_path / "odd.toml"
    config.write_text(
        "[product_analytics]\nanswer_ttl = inf\nanswer_stale = nan\n[gitlab]\ncache_ttl = 1e300\n"
        "[projects.2]\nanswer_ttl = -inf\n[redis]\ntimeout = nan\n"
    )
    result = run_cli("--check", "--config", str(config))
    assert result.returncode == 2
    for line in (
        "[product_analytics] answer_ttl: must be a finite number, not inf",
        "[product_analytics] answer_stale: must be a finite number, not nan",
        "[gitlab] cache_ttl: must be at most 3.1536e+07 seconds (a year), not 1e+300",
        "[projects.2] answer_ttl: must be a finite number, not -inf",
        "[redis] timeout: must be a finite number, not nan",
    ):
        assert line in result.stderr, result.stderr
