"""The local stack: PostgreSQL (or ClickHouse, stack/clickhouse.py) with demo events per project, and a real Cube.

Used by ``make run`` (``python -m stack.run``) and by the integration tests. Every
server binds 127.0.0.1 only; nothing waits a fixed time (readiness is polled).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

HERE = Path(__file__).resolve().parent
CUBE_DIR = HERE / "cube"
PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"), Path("/usr/local/bin")]
DATABASE = "analytics"

#: a page title in project 2's demo data that runs a script if a page ever renders Cube's values as HTML
PLANTED_MARKUP = "<img src=x onerror=\"document.title='pwned'\">"

#: demo data per project: (event names, pages, users) so each project's rows differ.
DEMO_PROJECTS: dict[int, dict[str, list[str]]] = {
    1: {
        "events": ["page_view", "add_to_cart", "checkout", "search"],
        "pages": ["/", "/products", "/products/42", "/cart", "/checkout"],
        "titles": ["Web shop", "Products", "Blue mug", "Cart", "Checkout"],
    },
    2: {
        "events": ["page_view", "comment", "subscribe"],
        "pages": ["/", "/posts/hello-world", "/posts/cube-and-gitlab", "/about", "/posts/markup"],
        # the last title is markup a page must show as text (the explorer's tests look for it)
        "titles": ["Blog", "Hello world", "Cube and GitLab", "About", PLANTED_MARKUP],
    },
}

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS {schema};
DROP TABLE IF EXISTS {schema}.events;
CREATE TABLE {schema}.events (
    event_id text PRIMARY KEY,
    event_name text NOT NULL,
    derived_tstamp timestamp NOT NULL,
    collector_tstamp timestamp NOT NULL,
    user_id text,
    domain_userid text NOT NULL,
    domain_sessionid text NOT NULL,
    page_urlpath text,
    page_url text,
    page_title text,
    br_lang text,
    os_name text,
    agent_name text,
    agent_version text
);
"""


def cube_token(secret: str, project_id: int, ttl: int = 180, issuer: str = "localstack") -> str:
    """A security context signed as the proxy signs it, for asking Cube directly."""
    import jwt

    now = int(time.time())
    claims = {"iat": now, "exp": now + ttl, "appId": f"gitlab_project_{project_id}", "iss": issuer, "gitlabToken": None}
    return jwt.encode(claims, secret, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` (a socket in TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def pg_bin(name: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} was not found: install the 'postgresql' package (apt-get install postgresql)"
        )
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run PostgreSQL's own commands as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(check: object, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``check()`` until true; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)  # polling interval of a readiness probe, not synchronisation
    raise RuntimeError(f"{what}: not ready within {timeout:g} s")


@dataclass
class Postgres:
    datadir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def psql(self, sql: str, database: str = DATABASE) -> str:
        result = subprocess.run(
            [pg_bin("psql"), *self.dsn_args, "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-At"],
            input=sql.encode(),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode()}")
        return result.stdout.decode()

    def start(self) -> None:
        fresh = not (self.datadir / "PG_VERSION").exists()
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")
            os.chmod(self.datadir, 0o700)
        if fresh:
            init = subprocess.run(
                _as_postgres(
                    [pg_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if init.returncode != 0:
                raise RuntimeError(
                    f"initdb failed for {self.datadir} (as root it runs as the postgres user, who must be able"
                    f" to reach that folder):\n{init.stderr.strip()}"
                )
        self.proc = subprocess.Popen(
            _as_postgres(
                [
                    pg_bin("postgres"),
                    "-D",
                    str(self.datadir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.datadir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def accepting() -> bool:
            return subprocess.run([pg_bin("pg_isready"), *self.dsn_args], capture_output=True).returncode == 0

        wait_until(accepting, "PostgreSQL", 60, self.proc)
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", database="postgres")
        if not exists.strip():
            self.psql(f"CREATE DATABASE {DATABASE}", database="postgres")

    @property
    def model_path(self) -> Path:
        return CUBE_DIR / "model"

    def cube_env(self) -> dict[str, str]:
        return {
            "CUBEJS_DB_TYPE": "postgres",
            "CUBEJS_DB_HOST": "127.0.0.1",
            "CUBEJS_DB_PORT": str(self.port),
            "CUBEJS_DB_USER": "postgres",
            "CUBEJS_DB_PASS": "postgres",
            "CUBEJS_DB_NAME": DATABASE,
        }

    def seed(self) -> dict[int, int]:
        return seed(self)

    def stop(self) -> None:
        """A fast shutdown through pg_ctl (a signal to runuser would not reach postgres)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run(
            _as_postgres([pg_bin("pg_ctl"), "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30"]),
            capture_output=True,
            check=False,
        )
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def demo_events(project_id: int, today: dt.date, days: int = 30, seed: int | None = None) -> list[tuple[object, ...]]:
    """Realistic events over the last ``days`` days; every 5th day (and a few more) stays empty."""
    spec = DEMO_PROJECTS[project_id]
    rng = random.Random(seed if seed is not None else project_id)
    users = [f"user-{project_id}-{n}" for n in range(20 if project_id == 1 else 8)]
    rows: list[tuple[object, ...]] = []
    for offset in range(days):
        day = today - dt.timedelta(days=offset)
        if offset % 5 == 3 or (project_id == 2 and offset % 4 == 1):
            continue  # empty days, for the zero-fill
        for _ in range(rng.randint(2, 6) if project_id == 1 else rng.randint(1, 3)):
            user = rng.choice(users)
            session = uuid.UUID(int=rng.getrandbits(128)).hex
            start = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=rng.randint(0, 23 * 60))
            for step in range(rng.randint(1, 8)):
                stamp = start + dt.timedelta(seconds=step * rng.randint(5, 300))
                page = rng.randrange(len(spec["pages"]))
                rows.append(
                    (
                        uuid.UUID(int=rng.getrandbits(128)).hex,
                        rng.choice(spec["events"]) if step else "page_view",
                        stamp,
                        stamp,
                        user if rng.random() < 0.7 else None,
                        user,
                        session,
                        spec["pages"][page],
                        f"https://demo-{project_id}.example.com{spec['pages'][page]}",
                        spec["titles"][page],
                        rng.choice(["en-US", "de-DE", "fr-FR"]),
                        rng.choice(["Linux", "Mac OS X", "Windows", "Android"]),
                        rng.choice(["Firefox", "Chrome", "Safari"]),
                        str(rng.randint(100, 130)),
                    )
                )
    return rows


#: the demo data as one SQL file: what `make run`, the tests and docker compose all load (dates relative to the
#: day it is loaded on, so the file never goes stale)
DEMO_SQL = Path(__file__).resolve().parent / "demo.sql"
#: the day the file's rows are computed from: any fixed day (only each row's distance from it counts)
_ANCHOR = dt.date(2026, 1, 1)


def days_back(value: dt.datetime, today: dt.date) -> tuple[int, int]:
    """A demo time as days before ``today`` and seconds into its day: what a demo file's rows are written as, so
    that they are relative to the day the file is loaded on and the file never goes stale."""
    return (today - value.date()).days, int((value - dt.datetime.combine(value.date(), dt.time())).total_seconds())


def _sql_literal(value: object, today: dt.date) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        days, seconds = days_back(value, today)
        return f"(CURRENT_DATE - {days}) + interval '{seconds} seconds'"
    return "'" + str(value).replace("'", "''") + "'"


def demo_sql() -> str:
    """Every demo project's schema and events, as SQL with dates relative to ``CURRENT_DATE``."""
    parts = ["-- The local stack's demo data (stack/demo.sql): written by `python -m stack.localstack`, do not edit.\n"]
    for project_id in DEMO_PROJECTS:
        schema = f"gitlab_project_{project_id}"
        rows = demo_events(project_id, _ANCHOR)
        values = ",\n".join("(" + ", ".join(_sql_literal(v, _ANCHOR) for v in row) + ")" for row in rows)
        parts.append(SCHEMA_SQL.format(schema=schema) + f"INSERT INTO {schema}.events VALUES\n{values};\n")
    return "".join(parts)


def seed(pg: Postgres) -> dict[int, int]:
    """(Re)create each demo project's schema and events from ``stack/demo.sql``; returns rows per project."""
    pg.psql(DEMO_SQL.read_text())
    return {project_id: len(demo_events(project_id, _ANCHOR)) for project_id in DEMO_PROJECTS}


def cube_installed() -> bool:
    return (CUBE_DIR / "node_modules" / "@cubejs-backend" / "server-core").is_dir()


def install_cube() -> None:
    if not cube_installed():
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=CUBE_DIR, check=True)


class Store(Protocol):
    """A database Cube serves from: its own variables for Cube, and the model Cube compiles for it."""

    @property
    def model_path(self) -> Path: ...

    def cube_env(self) -> dict[str, str]: ...

    def start(self) -> None: ...

    def seed(self) -> dict[int, int]: ...

    def stop(self) -> None: ...


@dataclass
class Cube:
    port: int
    store: Store
    secret: str
    log_path: Path
    #: log every Cube event (one JSON line each) so tests can count calls at Cube.
    log_queries: bool = False
    #: variables an operator might also set (``CUBEJS_DB_NAME``...), over the store's own
    extra_env: dict[str, str] = field(default_factory=dict)
    #: seconds Cube holds a query before it answers Continue wait (Cube's own 5 when None), and the slow cube's
    #: seconds of sleep (7 when None): the tests' stack makes both short, the waits they test the same in kind
    continue_wait: int | None = None
    slow_seconds: float | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:  # noqa: S310 - loopback only
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def launch(self) -> subprocess.Popen[bytes]:
        """Cube's process, not yet waited for (a test of a refused start reads its log).

        A port something else listens on is refused first: another Cube there would answer the readiness poll
        while this one failed to bind."""
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} (Cube's) is in use by another process: stop it, or pick another")
        env = {
            **os.environ,
            "NODE_ENV": "production",  # anything else is Cube's dev mode, which accepts garbage tokens
            "CUBEJS_API_SECRET": self.secret,
            "CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory",
            "CUBEJS_REFRESH_WORKER": "false",
            "CUBEJS_TELEMETRY": "false",
            **self.store.cube_env(),
            # Cube joins the model path to its working folder: relative to it
            "CUBE_MODEL_PATH": os.path.relpath(self.store.model_path, CUBE_DIR),
            "CUBE_HOST": "127.0.0.1",
            "CUBE_PORT": str(self.port),
            "CUBE_LOG_QUERIES": "true" if self.log_queries else "false",
        }
        for unset in ("CUBEJS_PG_SQL_PORT", "CUBEJS_SQL_PORT", "CUBEJS_DEV_MODE", "CUBEJS_DB_NAME"):
            if unset not in self.store.cube_env():
                env.pop(unset, None)
        if self.continue_wait is not None:
            env["CUBE_CONTINUE_WAIT"] = str(self.continue_wait)
        if self.slow_seconds is not None:
            env["CUBE_SLOW_SECONDS"] = str(self.slow_seconds)
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["node", "server.js"], cwd=CUBE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.proc

    def start(self) -> None:
        self.launch()
        wait_until(self.ready, f"Cube (log: {self.log_path})", 90, self.proc)

    def events(self, message: str) -> list[dict[str, object]]:
        """Cube's logged events of one kind ('Load Request', ...), oldest first."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"message":"{message}"' in line:
                found.append(json.loads(line))
        return found

    def stop(self) -> None:
        stop_process(self.proc, 15)


@dataclass
class Stack:
    store: Store
    cube: Cube
    secret: str
    rows: dict[int, int]

    @property
    def pg(self) -> Postgres:
        """The PostgreSQL of a stack on PostgreSQL."""
        assert isinstance(self.store, Postgres), "this stack runs on ClickHouse"
        return self.store


#: the stores the local stack runs on: `make run STORE=...`, and the tests of each
STORES = ("postgres", "clickhouse")


@contextlib.contextmanager
def running_stack(
    secret: str,
    workdir: Path | None = None,
    pg_port: int | None = None,
    cube_port: int | None = None,
    log_queries: bool = False,
    store: str = "postgres",
    continue_wait: int | None = None,
    slow_seconds: float | None = None,
) -> Iterator[Stack]:
    """A store seeded with both demo projects (PostgreSQL or ClickHouse), and Cube in front of it; stopped on exit.
    ``continue_wait`` and ``slow_seconds``: Cube's Continue-wait hold and the slow cube's sleep (``Cube``'s)."""
    install_cube()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pa-proxy-stack-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    database: Store
    if store == "clickhouse":
        from stack.clickhouse import ClickHouse

        database = ClickHouse(workdir / "clickhouse", pg_port or free_port())
    else:
        database = Postgres(workdir / "pgdata", pg_port or free_port())
    cube = Cube(
        cube_port or free_port(), database, secret, workdir / "cube.log", log_queries,
        continue_wait=continue_wait, slow_seconds=slow_seconds,
    )  # fmt: skip
    try:
        database.start()
        rows = database.seed()
        cube.start()
        yield Stack(database, cube, secret, rows)
    finally:
        cube.stop()
        database.stop()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    from stack.clickhouse import DEMO_CLICKHOUSE_SQL, demo_clickhouse_sql

    DEMO_SQL.write_text(demo_sql())
    DEMO_CLICKHOUSE_SQL.write_text(demo_clickhouse_sql())
    print(f"wrote {DEMO_SQL} and {DEMO_CLICKHOUSE_SQL}")
