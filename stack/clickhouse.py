"""ClickHouse for the local stack: Debian's ``clickhouse-server`` with GitLab's layout, a database per project.

GitLab keeps each project's events in the database ``gitlab_project_<id>``, table ``snowplow_events``
(Snowplow's enriched-event columns). ``make run STORE=clickhouse`` and the ClickHouse tests run this
server on loopback with its own data folder, seeded from ``stack/demo-clickhouse.sql`` (the same demo
events as PostgreSQL's), and Cube compiles the shipped model
(``deploy/kubernetes/components/clickhouse/model``) plus the stack's slow cube.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stack.localstack import (
    _ANCHOR,
    CUBE_DIR,
    DEMO_PROJECTS,
    days_back,
    demo_events,
    free_port,
    stop_process,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
#: the model shipped for operators who run Cube on GitLab's ClickHouse without GitLab's devkit
SHIPPED_MODEL = ROOT / "deploy" / "kubernetes" / "components" / "clickhouse" / "model"
#: the stack's own cubes on ClickHouse (a deliberately slow one, for the Continue-wait tests)
STACK_MODEL = CUBE_DIR / "model-clickhouse"
#: how long the slow cube sleeps (read from CUBE_SLOW_SECONDS), beside the model folder as the cube imports it
SLOW_SECONDS = CUBE_DIR / "slow_seconds.js"
DEMO_CLICKHOUSE_SQL = Path(__file__).resolve().parent / "demo-clickhouse.sql"
#: the user Cube connects as (a password, as an operator's Secret gives one); seeding uses ``default``
CUBE_USER, CUBE_PASSWORD = "cube", "local-stack-clickhouse"

#: ``snowplow_events``' columns: Snowplow's enriched-event names and GitLab's table
COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "String"),
    ("app_id", "String"),
    ("event_name", "String"),
    ("derived_tstamp", "DateTime"),
    ("collector_tstamp", "DateTime"),
    ("domain_userid", "String"),
    ("domain_sessionid", "String"),
    ("user_id", "Nullable(String)"),
    ("page_url", "String"),
    ("page_urlscheme", "String"),
    ("page_urlhost", "String"),
    ("page_urlpath", "String"),
    ("page_title", "String"),
    ("page_referrer", "String"),
    ("useragent", "String"),
    ("br_family", "String"),
    ("br_version", "String"),
    ("br_lang", "String"),
    ("os_name", "String"),
    ("os_family", "String"),
)
TABLE_SQL = (
    "CREATE TABLE {database}.snowplow_events (\n"
    + ",\n".join(f"    {name} {kind}" for name, kind in COLUMNS)
    + "\n) ENGINE = MergeTree() PARTITION BY toYYYYMM(derived_tstamp) ORDER BY (derived_tstamp, event_id)"
)

_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{data}/</path>
    <tmp_path>{data}/tmp/</tmp_path>
    <user_files_path>{data}/user_files/</user_files_path>
    <format_schema_path>{data}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <default><password></password><networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile><quota>default</quota></default>
        <{user}><password>{password}</password><networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile><quota>default</quota></{user}>
    </users>
    <quotas><default></default></quotas>
</yandex>
"""


def clickhouse_server() -> str:
    found = shutil.which("clickhouse-server") or ("/usr/sbin/clickhouse-server" if Path("/usr/sbin").exists() else None)
    if found is None or not Path(found).exists():
        raise RuntimeError(
            "ClickHouse's server was not found: install Debian's 'clickhouse-server'"
            " (apt-get install clickhouse-server, or `make clickhouse`)"
        )
    return found


@dataclass
class ClickHouse:
    """One ``clickhouse-server`` on loopback with its own folder; Cube reaches it over HTTP as ``cube``."""

    datadir: Path
    http_port: int
    tcp_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def model_path(self) -> Path:
        return self.datadir.parent / "clickhouse-model"

    def cube_env(self) -> dict[str, str]:
        """Cube's variables as an operator sets them for ClickHouse: no database name (cube.js picks it per project)."""
        return {
            "CUBEJS_DB_TYPE": "clickhouse",
            "CUBEJS_DB_HOST": "127.0.0.1",
            "CUBEJS_DB_PORT": str(self.http_port),
            "CUBEJS_DB_USER": CUBE_USER,
            "CUBEJS_DB_PASS": CUBE_PASSWORD,
        }

    def query(self, sql: str) -> str:
        """One statement over ClickHouse's HTTP interface as ``default``; an error raises with ClickHouse's text."""
        request = urllib.request.Request(self.url + "/", data=sql.encode())  # noqa: S310 - loopback only
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
                return str(resp.read().decode())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"ClickHouse refused {sql[:80]!r}: {err.read().decode(errors='replace')}") from err

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as resp:  # noqa: S310 - loopback only
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        server = clickhouse_server()
        self.tcp_port = self.tcp_port or free_port()
        data = self.datadir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (self.datadir / "config.xml").write_text(
            _CONFIG.format(http_port=self.http_port, tcp_port=self.tcp_port, data=data)
        )
        (self.datadir / "users.xml").write_text(_USERS.format(user=CUBE_USER, password=CUBE_PASSWORD))
        self._lay_out_model()
        log = (self.datadir / "clickhouse.log").open("ab")
        self.proc = subprocess.Popen(
            [server, f"--config-file={self.datadir / 'config.xml'}"],
            cwd=self.datadir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.ready, f"ClickHouse (log: {self.datadir / 'clickhouse.log'})", 60, self.proc)

    def _lay_out_model(self) -> None:
        """The shipped model and the stack's slow cube, in the one folder Cube compiles."""
        shutil.rmtree(self.model_path, ignore_errors=True)
        self.model_path.mkdir(parents=True)
        for source in (*sorted(SHIPPED_MODEL.glob("*.js")), *sorted(STACK_MODEL.glob("*.js"))):
            shutil.copy(source, self.model_path / source.name)
        shutil.copy(SLOW_SECONDS, self.model_path.parent / SLOW_SECONDS.name)  # the slow cube's ../slow_seconds

    def stop(self) -> None:
        stop_process(self.proc, 30)

    def seed(self) -> dict[int, int]:
        """(Re)create each demo project's database and events from ``stack/demo-clickhouse.sql``."""
        for statement in statements(DEMO_CLICKHOUSE_SQL.read_text()):
            self.query(statement)
        return {project_id: len(demo_events(project_id, _ANCHOR)) for project_id in DEMO_PROJECTS}


def statements(sql: str) -> list[str]:
    """A file's statements (``;`` at a line's end ends one), without its comment lines."""
    lines = [line for line in sql.splitlines() if not line.startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";\n") if part.strip().rstrip(";")]


def _literal(value: object, today: dt.date) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        days, seconds = days_back(value, today)
        return f"toDateTime(today() - {days}) + {seconds}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def snowplow_row(project_id: int, row: tuple[object, ...]) -> tuple[object, ...]:
    """A demo event (PostgreSQL's columns) as a ``snowplow_events`` row."""
    event_id, name, derived, collector, user, domain_user, session, path, url, title, lang, os_name, agent, version = (
        row
    )
    host = f"demo-{project_id}.example.com"
    useragent = f"Mozilla/5.0 ({os_name}) {agent}/{version}.0"
    family = "Windows" if os_name == "Windows" else "Linux" if os_name in ("Linux", "Android") else "Mac OS X"
    return (event_id, f"demo-{project_id}", name, derived, collector, domain_user, session, user, url, "https",
            host, path, title, "", useragent, agent, version, lang, os_name, family)  # fmt: skip


def demo_clickhouse_sql() -> str:
    """Each demo project's database, table and events, with times relative to ``today()``."""
    parts = ["-- The local stack's demo data on ClickHouse (stack/demo-clickhouse.sql): written by"
             " `python -m stack.localstack`, do not edit.\n"]  # fmt: skip
    for project_id in DEMO_PROJECTS:
        database = f"gitlab_project_{project_id}"
        rows = [snowplow_row(project_id, row) for row in demo_events(project_id, _ANCHOR)]
        values = ",\n".join("(" + ", ".join(_literal(v, _ANCHOR) for v in row) + ")" for row in rows)
        parts.append(
            f"DROP DATABASE IF EXISTS {database};\nCREATE DATABASE {database};\n"
            + TABLE_SQL.format(database=database)
            + f";\nINSERT INTO {database}.snowplow_events VALUES\n{values};\n"
        )
    return "".join(parts)
