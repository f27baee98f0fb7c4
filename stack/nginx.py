"""Debian's nginx, started on loopback from a server block: the benchmarks' baseline and the tests' load balancer."""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

from stack.localstack import wait_until


def nginx_installed() -> bool:
    return shutil.which("nginx") is not None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_conf(root: Path, server_block: str, port: int, workers: int = 1) -> Path:
    """nginx's configuration for ``server_block`` (``PORT`` in it is ``port``), with every file under ``root``."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes {workers};
            daemon off;
            master_process on;
            pid {root}/nginx.pid;
            error_log {root}/logs/error.log warn;
            worker_rlimit_nofile 20000;
            events {{ worker_connections 10000; }}
            http {{
                access_log off;
                client_body_temp_path {root}/body;
                proxy_temp_path {root}/proxy;
                fastcgi_temp_path {root}/fastcgi;
                uwsgi_temp_path {root}/uwsgi;
                scgi_temp_path {root}/scgi;
                keepalive_requests 1000000;
            """
        )
        + server_block.replace("PORT", str(port))
        + "\n}\n"
    )
    return conf


def start_nginx(root: Path, server_block: str, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    """nginx in the foreground with its files under ``root``; ``PORT`` in the block is ``port``; waits until it listens.

    The access log (JSON-free, nginx's combined format) is ``root/logs/access.log`` when the
    block turns it on; the error log is ``root/logs/error.log``. To change the block later:
    ``write_conf`` again, then SIGHUP the process (nginx reloads without dropping a connection).
    """
    conf = write_conf(root, server_block, port, workers)
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)], stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open(port), f"nginx ({root})", 15, proc)
    return proc
