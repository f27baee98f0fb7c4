"""Debian's redis-server and redis-sentinel on free loopback ports, for the shared layer's tests.

A server may be plain, or run as operators run it: a password (``requirepass``) or ACL
users, TLS with a CA and client certificates, a replica of another; a sentinel watches a
primary. Each is one process, started, stopped and restarted on the same port.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import redis

from stack.localstack import free_port, stop_process, wait_until


def redis_installed() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """One redis-server; ``config`` lines go to its configuration file, ``client`` is how to reach it."""

    program = "redis-server"

    def __init__(
        self,
        workdir: Path,
        config: list[str] | None = None,
        client: dict[str, Any] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        #: command-line arguments after the configuration file (a container's args)
        self.args = args or []
        self.workdir = workdir
        self.config = config or []
        #: redis-py's keyword arguments that reach this server (a password, TLS files...)
        self.client = client or {}
        self.tls = any(line.startswith("tls-port") for line in self.config)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def lines(self) -> list[str]:
        port = ["port 0", f"tls-port {self.port}"] if self.tls else [f"port {self.port}"]
        plain = [line for line in self.config if not line.startswith("tls-port")]
        # no wait for replicas on SIGTERM (Redis 7 waits up to 10 s for them to catch up: a test's teardown)
        quick = ["shutdown-timeout 0"] if self.program == "redis-server" else []
        return [*port, "bind 127.0.0.1", 'save ""', "appendonly no", f"dir {self.workdir}", *quick, *plain]

    def connect(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=self.tls, socket_timeout=2, **self.client)

    def answers(self) -> bool:
        try:
            with self.connect() as conn:
                return bool(conn.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.program}.conf"
        conf.write_text("\n".join(self.lines()) + "\n")
        self.proc = subprocess.Popen(
            [self.program, str(conf), *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self.answers, self.program, 15, self.proc)

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None


class Sentinel(RedisServer):
    """One redis-sentinel watching ``service`` at ``primary`` (a quorum of one: it alone decides a failover)."""

    program = "redis-sentinel"

    def __init__(self, workdir: Path, service: str, primary: RedisServer, password: str | None, auth: str | None):
        config = [
            f"sentinel monitor {service} 127.0.0.1 {primary.port} 1",
            f"sentinel down-after-milliseconds {service} 1000",
            f"sentinel failover-timeout {service} 10000",
        ]
        if auth is not None:
            config.append(f"sentinel auth-pass {service} {auth}")
        if password is not None:
            config.append(f"requirepass {password}")
        super().__init__(workdir, config, {"password": password} if password else {})

    def lines(self) -> list[str]:
        return [f"port {self.port}", "bind 127.0.0.1", f"dir {self.workdir}", *self.config]
