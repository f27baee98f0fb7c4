"""The Deployment as shipped, run as a kubelet would run it: a rolling replacement under steady traffic.

Each pod is emulated from the rendered manifests (``kubectl kustomize`` of the example overlay):
its ConfigMaps and Secret laid out under a scratch root at their mount paths, each container's
command started with its rendered environment, Cube being Cube's own server (``cubejs-server``,
what the ``cubejs/cube`` image runs, from ``stack/cube``'s install) reading the shipped
``cube.js`` from its working directory, the proxy as the image installs it. What cannot be the
same on one machine is moved and said: each pod's ports are free ones (pods do not share a
network namespace in Kubernetes), the proxy's Cube URL follows its pod's Cube port, and the
user's own pieces (the data model and the database Secret) are the local stack's.

Each container runs under its security context, as far as this machine allows (it needs root,
which the tests have): in a mount namespace of its own, the root filesystem (and ``/tmp``)
read-only when the container says so, each of its emptyDirs writable (the one a container
mounts at ``/tmp`` given to it as ``TMPDIR``: this repository, which the containers' programs
are run from, may itself live under ``/tmp``), the mounted ConfigMaps and Secrets read-only,
privileges never regained. Cube runs as the pod's user and groups (10001). The proxy keeps this
machine's user: its Python lives under ``/root``, which no other user may enter (the image
installs it where the pod's user can).

The kubelet's order: the native sidecar (Cube) starts first and the proxy after it is up; a new
pod takes traffic once its readiness probe passes. On termination the endpoints controller takes
the pod out of the Service while the kubelet sends SIGTERM to the proxy; Cube, a sidecar, gets
its SIGTERM only once the proxy has exited. Two pods behind nginx (the Service), replaced one
after the other while callers keep asking: no request may fail. The old shape, both containers
SIGTERMed at once, is kept as a test too: it loses requests (Cube's server exits at once on
SIGTERM, while the proxy still serves through its drain delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stack.localstack import CUBE_DIR, Store, free_port, stop_process
from stack.nginx import start_nginx, write_conf
from tests.conftest import MAINTAINER, QUERY, REPORTER
from tests.fakes.gitlab import FakeToken
from tests.stack.conftest import NO_DATABASE
from tests.support.manifests import by_kind, render

LOAD = "/api/v4/projects/1/product_analytics/request/load"
#: what the user supplies beside the manifests (the Deployment's envFrom Secret): the local stack's store
DATABASE_SECRET = "product-analytics-cube-database"
#: a container's temporary directory (its emptyDir, in the manifests), as the container sees it
CONTAINER_TMP = "/tmp"  # noqa: S108 - a path inside the container
#: how long after a pod's SIGTERM its endpoint leaves the Service (kube-proxy's and the load balancer's lag)
ENDPOINT_LAG = 1.0
#: seconds between one caller's requests (four callers: about 100 requests a second in all)
PACE = 0.04


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except OSError:
        return False


async def _until(check, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.1)  # a probe's period, bounded by the deadline


class Pod:
    """One pod of the rendered Deployment, its containers started in the kubelet's order."""

    def __init__(
        self,
        name: str,
        rendered: dict[tuple[str, str], Any],
        root: Path,
        store: Store,
        gitlab_url: str,
        database_env: dict[str, str] | None = None,
    ):
        self.name = name
        self.root = root / name
        deployment = rendered[("Deployment", "product-analytics-proxy")]
        self.spec = deployment["spec"]["template"]["spec"]
        self.grace = float(self.spec["terminationGracePeriodSeconds"])
        self.secret = rendered[("Secret", "product-analytics-proxy-keys")]["stringData"]
        self.configmaps = {d["metadata"]["name"]: d for d in rendered.values() if d["kind"] == "ConfigMap"}
        #: the keys the overlay's own database Secret names, if it ships an example of one
        database = rendered.get(("Secret", DATABASE_SECRET), {}).get("stringData")
        self.database_keys = set(database) if database is not None else None
        self.cube_port, self.port = free_port(), free_port()
        self.store, self.gitlab_url = store, gitlab_url
        self.database_env = database_env or {}
        self.cube: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None

    # -- the pod's filesystem and each container's environment ------------------------------

    def _where(self, mount: dict[str, Any]) -> Path:
        """Where a volume mount lives in the emulation: an emptyDir by its volume's name (two containers' ``/tmp``
        are two volumes), anything else at its mount path under the pod's root."""
        volume = next(v for v in self.spec["volumes"] if v["name"] == mount["name"])
        if "emptyDir" in volume:
            return self.root / "volumes" / mount["name"]
        return self.root / mount["mountPath"].lstrip("/")

    def _mount(self, container: dict[str, Any]) -> None:
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        for mount in container.get("volumeMounts", []):
            target = self._where(mount)
            volume = volumes[mount["name"]]
            self._owned_by_the_pod(target.parent if "subPath" in mount else target)
            if "configMap" in volume and volume["configMap"]["name"] in self.configmaps:
                data = self.configmaps[volume["configMap"]["name"]]["data"]
                if "subPath" in mount:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[mount["subPath"]])
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    for key, text in data.items():
                        (target / key).write_text(text)
            elif "configMap" in volume:  # the user's data model: the local stack's
                shutil.copytree(CUBE_DIR / "model", target, dirs_exist_ok=True)
            elif "secret" in volume:
                target.mkdir(parents=True, exist_ok=True)
                for item in volume["secret"]["items"]:
                    (target / item["path"]).write_text(self.secret[item["key"]])
            else:  # an emptyDir
                target.mkdir(parents=True, exist_ok=True)
        self._permissions(container)

    def _owned_by_the_pod(self, target: Path) -> None:
        """Every directory from the pod's root down to ``target`` made, and enterable by the pod's user."""
        target.mkdir(parents=True, exist_ok=True)
        for directory in (target, *target.parents):
            if directory == self.root.parent:
                break
            directory.chmod(0o755)

    def _permissions(self, container: dict[str, Any]) -> None:
        """As the kubelet leaves them: ConfigMaps world-readable, Secrets in their ``defaultMode`` for the pod's
        ``fsGroup``, emptyDirs writable by all (0777)."""
        if os.geteuid() != 0:
            return
        group = self.spec["securityContext"]["fsGroup"]
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        for mount in container.get("volumeMounts", []):
            target = self._where(mount)
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                target.chmod(0o777)
                continue
            for path in (target, *target.rglob("*")) if target.is_dir() else (target,):
                if path.is_dir():
                    path.chmod(0o755)
                elif "secret" in volume:
                    os.chown(path, 0, group)
                    path.chmod(volume["secret"].get("defaultMode", 0o644))
                else:
                    path.chmod(0o644)

    def _contained(
        self, container: dict[str, Any], argv: list[str], cwd: Path, as_pod_user: bool
    ) -> tuple[list[str], dict[str, str]]:
        """``argv`` wrapped to run under the container's security context (see the module's docstring), and the
        environment that goes with it: a mount namespace with the root read-only and the emptyDirs writable, no
        new privileges, and (when ``as_pod_user``) the pod's user and groups. As it is without root, which a
        mount namespace needs."""
        if os.geteuid() != 0:
            return argv, {}
        context = {**self.spec["securityContext"], **container.get("securityContext", {})}
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
        steps, env = [], {}
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        for mount in container.get("volumeMounts", []):
            if "emptyDir" in volumes[mount["name"]]:
                assert mount["mountPath"] == CONTAINER_TMP, "the emulation gives an emptyDir as TMPDIR"
                emulated = shlex.quote(str(self._where(mount)))
                steps.append(f"mount --bind {emulated} {emulated}")  # a mount of its own: still writable below
                env["TMPDIR"] = str(self._where(mount))
        if context.get("readOnlyRootFilesystem"):
            steps.append("mount -o remount,bind,ro /")
            if os.path.ismount(CONTAINER_TMP):  # part of a container's root filesystem, whatever this host made of it
                steps.append(f"mount -o remount,bind,ro {CONTAINER_TMP}")
        steps.append(f"cd {shlex.quote(str(cwd))}")
        user = ""
        if as_pod_user:
            assert context["runAsNonRoot"] is True
            user = f"--reuid {context['runAsUser']} --regid {context['runAsGroup']} --groups {context['fsGroup']} "
        steps.append(f'exec setpriv {user}--no-new-privs --bounding-set -all "$@"')
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps), "sh", *argv]
        return wrapped, env

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "CUBEJS_")) and k != "TMPDIR"}
        local = self.store.cube_env()
        for source in container.get("envFrom", []):  # in order: a later source wins, as in Kubernetes
            if "secretRef" in source:  # the user's own database Secret: the local stack's store, its keys if shipped
                assert source["secretRef"]["name"] == DATABASE_SECRET
                keys = local.keys() if self.database_keys is None else self.database_keys
                env.update({key: local[key] for key in keys if key in local} | self.database_env)
            else:  # a shipped ConfigMap of Cube's variables: where the database is, moved to this machine's
                data = self.configmaps[source["configMapRef"]["name"]]["data"]
                moved = {"CUBEJS_DB_HOST": local["CUBEJS_DB_HOST"], "CUBEJS_DB_PORT": local["CUBEJS_DB_PORT"]}
                env.update(data | {key: value for key, value in moved.items() if key in data})
            env["CUBEJS_CACHE_AND_QUEUE_DRIVER"] = "memory"  # no Cube Store here
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = (
                    entry["value"].replace("/run/", f"{self.root}/run/").replace("/etc/", f"{self.root}/etc/")
                )
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "product-analytics-proxy-keys"
                env[entry["name"]] = self.secret[ref["key"]]
        return env

    # -- the kubelet -----------------------------------------------------------------------------

    async def start(self) -> None:
        """The sidecar (Cube) first, the proxy once Cube is up; returns when the pod is Ready."""
        [cube] = self.spec["initContainers"]
        assert cube["restartPolicy"] == "Always"  # a native sidecar
        self._mount(cube)
        env = self._env(cube) | {"PORT": str(self.cube_port), "HOME": "/"}  # the pod's user has no home
        conf = self.root / "cube" / "conf"
        log = (self.root / "cube.log").open("ab")
        server, contained = self._contained(
            cube, ["node", str(CUBE_DIR / "node_modules" / ".bin" / "cubejs-server")], conf, as_pod_user=True
        )
        self.cube = subprocess.Popen(
            server, cwd=conf, env=env | contained, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        probe = cube["readinessProbe"]["httpGet"]
        await _until(lambda: _ok(f"http://127.0.0.1:{self.cube_port}{probe['path']}"), f"{self.name}'s Cube", 90,
                     self.cube)  # fmt: skip
        [proxy] = self.spec["containers"]
        self._mount(proxy)
        env = self._env(proxy)
        config = Path(env["PROXY_CONFIG"])
        settings = tomllib.loads(config.read_text())
        key_file = settings["product_analytics"]["cube_api_key_file"]
        config.write_text(config.read_text().replace(key_file, f"{self.root}{key_file}"))
        env |= {
            "PROXY_SERVER__PORT": str(self.port),
            "PROXY_SERVER__METRICS_PORT": str(free_port()),
            "PROXY_SERVER__METRICS_HOST": "127.0.0.1",
            "PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL": f"http://127.0.0.1:{self.cube_port}",
            "PROXY_GITLAB__URL": self.gitlab_url,
        }
        command, contained = self._contained(proxy, [sys.executable, "-m", "proxy"], self.root, as_pod_user=False)
        self.proxy = subprocess.Popen(
            command, env=env | contained, stderr=(self.root / "proxy.log").open("ab"), start_new_session=True,
        )  # fmt: skip
        ready = proxy["readinessProbe"]["httpGet"]["path"]
        await _until(lambda: _ok(f"http://127.0.0.1:{self.port}{ready}"), f"{self.name}'s proxy", 60, self.proxy)
        if os.geteuid() == 0:  # both serve under their security contexts: Cube as the pod's user
            assert _runs_contained(self.cube.pid, self.spec["securityContext"]["runAsUser"])
            assert _runs_contained(self.proxy.pid, None)

    async def terminate(self, sidecar_order: bool) -> None:
        """SIGTERM as the kubelet sends it: to the proxy, and to Cube once the proxy exited (a sidecar) or, in the
        old shape, to both at once; whatever is left at the grace period's end is killed."""
        assert self.cube is not None and self.proxy is not None
        deadline = time.monotonic() + self.grace
        self.proxy.send_signal(signal.SIGTERM)
        if not sidecar_order:
            self.cube.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.proxy.wait, max(0.0, deadline - time.monotonic()))
        if sidecar_order:
            self.cube.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.cube.wait, max(0.1, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for proc in (self.proxy, self.cube):
            stop_process(proc, 5)


class Service:
    """nginx as the Service in front of the pods: its upstream is the Ready pods, changed with a reload."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root / "nginx", free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _block(self, pods: list[Pod]) -> str:
        servers = "".join(f"server 127.0.0.1:{pod.port};" for pod in pods)
        return (
            f"upstream pods {{ {servers} }}\n"
            # no client keep-alive: a reload's old workers close idle client connections, and a request sent on
            # one just then is reset (nginx's reload race, not a pod's drain; kube-proxy does not reload)
            "server { listen 127.0.0.1:PORT; keepalive_timeout 0;"
            " location / { proxy_pass http://pods; proxy_http_version 1.1;"
            ' proxy_set_header Connection ""; proxy_next_upstream error timeout; } }'
        )

    def route(self, pods: list[Pod]) -> None:
        if self.proc is None:
            self.proc = start_nginx(self.root, self._block(pods), self.port)
        else:
            write_conf(self.root, self._block(pods), self.port)
            self.proc.send_signal(signal.SIGHUP)  # a graceful reload: no connection is dropped

    def stop(self) -> None:
        stop_process(self.proc, 10)


class Callers:
    """Steady traffic through the Service: a few callers asking one after another until told to stop."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url, self.tokens = url, tokens
        self.statuses: Counter[int | str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _call(self, n: int) -> None:
        headers = {"PRIVATE-TOKEN": self.tokens[n]}
        async with aiohttp.ClientSession() as session:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = {"query": {**QUERY, "limit": 1 + (n * 1000 + i) % 50}}
                try:
                    async with session.post(self.url, json=body, headers=headers) as resp:
                        await resp.read()
                        self.statuses[resp.status] += 1
                except aiohttp.ClientError as exc:
                    self.statuses[type(exc).__name__] += 1
                await asyncio.sleep(PACE)  # each caller's pace (under the proxy's rate limit), not a synchronisation

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._call(n)) for n in range(len(self.tokens))]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failed(self) -> dict[int | str, int]:
        return {k: v for k, v in self.statuses.items() if k != 200}


async def _totals(port: int, token: str) -> dict[int, int]:
    """Each demo project's event count, asked through the Service: a tenant sees its own rows only."""
    totals = {}
    async with aiohttp.ClientSession() as session:
        for project in (1, 2):
            url = f"http://127.0.0.1:{port}/api/v4/projects/{project}/product_analytics/request/load"
            async with session.post(url, json={"query": QUERY}, headers={"PRIVATE-TOKEN": token}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            totals[project] = sum(int(row["TrackedEvents.count"]) for row in body["results"][0]["data"])
    return totals


@pytest.fixture
def pods_root():
    """Where the emulated pods' filesystems live: outside /tmp (each container mounts its emptyDir there) and
    enterable by the pod's user (pytest's own folders are not)."""
    root = Path(tempfile.mkdtemp(prefix="pa-pods-", dir="/var/tmp"))
    root.chmod(0o755)
    yield root
    if os.environ.get("KEEP_PODS") is None:
        shutil.rmtree(root, ignore_errors=True)


def _runs_contained(pid: int, uid: int | None) -> bool:
    """Whether a process runs with a read-only root filesystem (and as ``uid``, when given)."""
    mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    read_only_root = any(f[4] == "/" and f[5].split(",")[0] == "ro" for f in mounts)
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return read_only_root and (uid is None or int(status["Uid"].split()[0]) == uid)


async def _rolling_replacement(
    tmp_path: Path, pods_root: Path, stack, gitlab, gitlab_url: str, sidecar_order: bool, replace: int
) -> Callers:
    tokens = [f"glpat-caller-{n:012d}" for n in range(4)]
    for token in tokens:  # a token each: the proxy's rate limit is per caller
        gitlab.tokens[token] = FakeToken(1, ["api"])
    rendered = by_kind(render("example"))
    pods = [Pod(f"pod-{n}", rendered, pods_root, stack.store, gitlab_url) for n in range(2)]
    service = Service(tmp_path)
    started: list[Pod] = []
    try:
        for pod in pods:
            started.append(pod)
            await pod.start()
        service.route(pods)
        callers = Callers(f"http://127.0.0.1:{service.port}{LOAD}", tokens)
        callers.start()
        try:
            await _until(lambda: callers.statuses[200] >= 20, f"traffic through both pods ({callers.statuses})", 30)
            for n in range(replace):  # maxSurge 1, maxUnavailable 0: a new pod Ready, then an old one goes
                new = Pod(f"pod-new-{n}", rendered, pods_root, stack.store, gitlab_url)
                started.append(new)
                await new.start()
                old = pods.pop(0)
                pods.append(new)
                stopping = asyncio.ensure_future(old.terminate(sidecar_order))
                await asyncio.sleep(ENDPOINT_LAG)  # the endpoint leaves the Service this long after SIGTERM
                service.route(pods)
                await stopping
                served = callers.statuses[200]
                await _until(lambda: callers.statuses[200] >= served + 20, "traffic after the replacement", 30)  # noqa: B023
            if sidecar_order:  # the replaced pods keep the tenants apart through the shipped cube.js
                assert await _totals(service.port, tokens[0]) == {1: stack.rows[1], 2: stack.rows[2]}
        finally:
            await callers.stop()
        return callers
    finally:
        service.stop()
        for pod in started:
            pod.kill()


@pytest.mark.long  # half a minute of traffic through the pods' replacement (make test-long)
async def test_a_rolling_replacement_under_traffic_fails_no_request(tmp_path, pods_root, stack, gitlab, gitlab_url):
    callers = await _rolling_replacement(tmp_path, pods_root, stack, gitlab, gitlab_url, sidecar_order=True, replace=2)
    assert callers.statuses[200] >= 100 and callers.failed() == {}, dict(callers.statuses)


@pytest.mark.long  # half a minute of traffic through the pods' replacement (make test-long)
async def test_the_old_shape_both_containers_stopped_at_once_loses_requests(
    tmp_path, pods_root, stack, gitlab, gitlab_url
):
    """What the manifests did before Cube became a sidecar: Cube exits at SIGTERM while the proxy still serves."""
    callers = await _rolling_replacement(tmp_path, pods_root, stack, gitlab, gitlab_url, sidecar_order=False, replace=1)
    assert callers.failed(), dict(callers.statuses)


@pytest.mark.skipif(os.geteuid() != 0, reason="a container's read-only root needs a mount namespace, which needs root")
async def test_the_emulation_holds_a_container_to_its_read_only_root(pods_root, stack, gitlab_url):
    """The proxy without the emptyDir its manifests give it at /tmp (where its metrics folder goes) cannot start
    on a read-only root, here as it could not in a pod: the emulation does not let a manifest's gap pass."""
    rendered = by_kind(render("example"))
    spec = rendered[("Deployment", "product-analytics-proxy")]["spec"]["template"]["spec"]
    [proxy] = spec["containers"]
    proxy["volumeMounts"] = [m for m in proxy["volumeMounts"] if m["name"] != "tmp"]  # its emptyDir at /tmp
    pod = Pod("pod-without-tmp", rendered, pods_root, stack.store, gitlab_url)
    try:
        with pytest.raises(AssertionError, match="proxy: the process exited with 1"):
            await pod.start()
        assert "No usable temporary directory" in (pod.root / "proxy.log").read_text()
    finally:
        pod.kill()


@pytest.mark.parametrize(
    "database_env", [{}, {"CUBEJS_DB_NAME": "gitlab_project_1"}], ids=["as_shipped", "db_name_set"]
)
async def test_the_clickhouse_overlay_keeps_each_project_to_its_own_database(
    pods_root, clickhouse_stack, gitlab_url, database_env
):
    """The clickhouse overlay as rendered (its cube.js, its model of GitLab's members, its ConfigMap of where
    ClickHouse is, the Secret's keys) on Debian's ClickHouse: each project its own rows, also with CUBEJS_DB_NAME
    set in the Secret as Cube's docs tell operators to; a project without a database is 404."""
    rendered = by_kind(render("clickhouse"))
    pod = Pod("pod-clickhouse", rendered, pods_root, clickhouse_stack.store, gitlab_url, database_env)
    try:
        await pod.start()
        totals = await _totals(pod.port, REPORTER["PRIVATE-TOKEN"])
        assert totals == {1: clickhouse_stack.rows[1], 2: clickhouse_stack.rows[2]}
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{pod.port}/api/v4/projects/{NO_DATABASE}/product_analytics/request/load"
            async with session.post(url, json={"query": QUERY}, headers=MAINTAINER) as resp:
                assert (resp.status, await resp.json()) == (404, {"message": "404 Clickhouse Database Not Found"})
        log = (pod.root / "cube.log").read_text()
        assert ("CUBEJS_DB_NAME=gitlab_project_1 is ignored on ClickHouse" in log) == bool(database_env)
    finally:
        pod.kill()
