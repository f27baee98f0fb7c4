"""Real proxy processes for the tests: started as production starts them, and never left behind.

Each is killed with every process below it when its test ends, passed or failed, so no
worker or fill process outlives a test: a launcher (which starts servers in sessions of their
own) in a process group of its own (``kill_group``), the proxy by its process tree
(``kill_tree``).
"""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import CUBE_KEY


def kill_group(pid: int) -> None:
    """SIGKILL to every process of ``pid``'s process group (its session leader's), if any is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs...), deepest last, as /proc lists them now."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
        found.extend(children)
        frontier.extend(children)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every process below it: a proxy's workers and their fill processes.

    Used where a test must leave the proxy in the test's own session: a session of its own
    would give it a scheduling group of its own (autogroup), which changes what the latency
    tests measure.
    """
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, signal.SIGKILL)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_line(stream, needle, limit=200):
    for _ in range(limit):
        line = await asyncio.wait_for(stream.readline(), 30)
        if not line:
            raise AssertionError(f"process ended before printing {needle!r}")
        if needle in line.decode():
            return line.decode()
    raise AssertionError(f"{needle!r} not printed")


@contextlib.asynccontextmanager
async def proxy_process(
    tmp_path,
    gitlab_url,
    cube_url,
    cube_section="",
    server_section="",
    preexec_fn=None,
    shutdown_timeout=20,
    drain_delay=0.0,
    sections="",
):
    """The proxy as production runs it (``python -m proxy``), listening; it and every process below it
    (workers, fill processes) are killed when the test ends, whatever happened."""
    port = free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"[server]\nport = {port}\nshutdown_timeout = {shutdown_timeout}\n"
        f"drain_delay = {drain_delay}\n{server_section}\n"
        f'[gitlab]\nurl = "{gitlab_url}"\n'
        f'[product_analytics]\ncube_api_base_url = "{cube_url}"\ncube_api_key = "{CUBE_KEY}"\n[cube]\n{cube_section}\n'
        f"{sections}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--config", str(config), stderr=asyncio.subprocess.PIPE, preexec_fn=preexec_fn,
    )  # fmt: skip
    try:
        await wait_for_line(proc.stderr, "listening")
        yield proc, port
    finally:
        kill_tree(proc.pid)  # its workers and fill processes too, whatever the test left
        await proc.wait()


def open_files_limits(pid: int) -> tuple[str, str]:
    """The soft and hard limits on open files of a running process, as the kernel reports them."""
    line = next(
        line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max open files")
    )
    soft, hard = line.split()[3:5]
    return soft, hard


async def ended(pid: int) -> None:
    """Wait until a process (not necessarily our child) has ended: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def worker_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def is_json(line: str) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no RSS for {pid}")


@contextlib.asynccontextmanager
async def serving(tmp_path, gitlab_url, cube_url, server_section="", cube_section=""):
    """The proxy with one worker; its stderr read as it comes (a full pipe would stall it), each access line kept
    (``access``: the proxy's own account of each request); stopped with SIGTERM."""
    async with proxy_process(
        tmp_path, gitlab_url, cube_url, server_section=server_section, cube_section=cube_section
    ) as (proc, port):
        lines: list[bytes] = []

        async def drain() -> None:
            while line := await proc.stderr.readline():
                lines.append(line)

        def access() -> list[dict]:
            return [entry for line in lines if (entry := orjson.loads(line)).get("event") == "request"]

        reading = asyncio.ensure_future(drain())
        try:
            yield port, worker_of(proc.pid), access
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            await reading


def worker_of(parent: int) -> int:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])
