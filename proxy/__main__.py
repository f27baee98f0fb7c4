"""``python -m proxy --config FILE`` (or ``PROXY_CONFIG=FILE``): run the proxy."""

from __future__ import annotations

import argparse
import json
import os
import sys

from proxy import __version__
from proxy.auth.dev_tokens import load_dev_tokens
from proxy.runtime.preflight import check_connections, health, nothing_to_serve
from proxy.runtime.server import run
from proxy.settings import Settings, SettingsError, load_settings, redacted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="product-analytics-proxy", description=__doc__)
    parser.add_argument(
        "--config", default=os.environ.get("PROXY_CONFIG"), help="settings TOML file (default: $PROXY_CONFIG)"
    )
    parser.add_argument("--check", action="store_true", help="validate the settings and exit")
    parser.add_argument(
        "--connect",
        action="store_true",
        help="with --check: also reach GitLab, and ask each Cube's /meta with a JWT signed with its key",
    )
    parser.add_argument(
        "--health", action="store_true", help="exit 0 if the proxy on the configured port answers /-/liveness"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective settings as JSON, secrets redacted, and exit"
    )
    parser.add_argument("--workers", type=int, help="worker processes sharing the port (overrides [server] workers)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.workers is not None:
        env["PROXY_SERVER__WORKERS"] = str(args.workers)  # the command line wins over the environment
    try:
        settings = load_checked(args.config, env)
    except SettingsError as exc:
        print(f"product-analytics-proxy: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(redacted(settings), indent=2, sort_keys=True))
        return 0
    if args.health:
        return health(settings)
    missing = nothing_to_serve(settings)
    if missing is not None:
        print(f"product-analytics-proxy: {missing}", file=sys.stderr)
        return 2
    if args.check:
        print(
            f"settings are valid ({settings.server.workers} worker(s) on {settings.server.host}:{settings.server.port})"
        )
        return check_connections(settings) if args.connect else 0

    def load_again() -> Settings:  # SIGHUP: the same file and environment, read again and checked as at start-up
        fresh = load_checked(args.config, env)
        if (missing := nothing_to_serve(fresh)) is not None:
            raise SettingsError([missing])
        return fresh

    return run(settings, load_again)


def load_checked(config: str | None, env: dict[str, str]) -> Settings:
    """The settings from the file and the environment, checked: the one path start-up and every reload take (the
    dev tokens file read too, when it is the backend)."""
    settings = load_settings(config, env)
    if settings.auth.backend == "dev_tokens":
        load_dev_tokens(settings.auth.dev_tokens_file)
    return settings


if __name__ == "__main__":
    sys.exit(main())
