"""deploy/kubernetes/: every manifest valid for Kubernetes 1.33, and the paths and ports in them the proxy's real ones.

The manifests are checked offline against the Kubernetes schemas (``kubernetes-validate``,
strict: an unknown field is an error). Then the proxy is started as the pod would start it:
the ConfigMap's ``proxy.toml`` and the Secret's files laid out under a scratch root at the
Deployment's mount paths, and each probe the Deployment declares is called.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from stack.localstack import free_port, wait_until
from tests.conftest import CUBE_KEY
from tests.support.manifests import DEPLOY, KUBERNETES, by_kind, load, render
from tests.support.processes import kill_group

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("example", "fleet", "clickhouse", "tracing")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_is_valid_for_kubernetes(overlay: str) -> None:
    for doc in render(overlay):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_kustomizations_name_files_that_exist() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        data = load(kustomization)
        named = [*data.get("resources", []), *data.get("components", [])]
        named += [p["path"] for p in data.get("patches", []) if "path" in p]
        named += [f for generator in data.get("configMapGenerator", []) for f in generator.get("files", [])]
        for entry in named:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry} is missing"


def deployment(overlay: str = "example") -> dict[str, Any]:
    return by_kind(render(overlay))[("Deployment", "product-analytics-proxy")]


def proxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == "proxy")


def proxy_toml(overlay: str = "example") -> dict[str, Any]:
    return tomllib.loads(
        by_kind(render(overlay))[("ConfigMap", "product-analytics-proxy-config")]["data"]["proxy.toml"]
    )


def test_the_pod_is_locked_down_and_waits_long_enough_on_shutdown() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    for container in [*pod["containers"], *pod["initContainers"]]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
        assert security["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    config = proxy_toml()
    needed = config["server"]["drain_delay"] + config["server"]["shutdown_timeout"]
    assert pod["terminationGracePeriodSeconds"] > needed
    # Cube is a native sidecar: started before the proxy, stopped only after it (Kubernetes 1.29+)
    [cube] = pod["initContainers"]
    assert cube["name"] == "cube" and cube["restartPolicy"] == "Always"
    assert "ports" not in cube  # Cube is the proxy's, on localhost
    mounts = {m["mountPath"]: m for m in cube["volumeMounts"]}
    assert mounts["/cube/conf/cube.js"]["subPath"] == "cube.js" and "/tmp" in mounts  # noqa: S108 - a mount path
    ports = {p["name"]: p["containerPort"] for p in proxy_container(pod)["ports"]}
    assert ports == {"http": config["server"]["port"], "metrics": config["server"]["metrics_port"]}
    assert config["server"]["metrics_host"] == "0.0.0.0"


def test_configuration_is_generated_so_an_edit_rolls_the_pods() -> None:
    found = by_kind(render("example"))
    pod = found[("Deployment", "product-analytics-proxy")]["spec"]["template"]["spec"]
    mounted = {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}
    rendered = {doc["metadata"]["name"] for doc in render("example") if doc["kind"] == "ConfigMap"}
    for volume in ("config", "cube-config"):
        assert re.fullmatch(r"product-analytics-(proxy|cube)-config-[a-z0-9]{10}", mounted[volume])
        assert mounted[volume] in rendered  # the Deployment names the generated, hash-suffixed ConfigMap
    # the one tenant file, the local stack's and the pods' alike
    cube_js = found[("ConfigMap", "product-analytics-cube-config")]["data"]["cube.js"]
    assert cube_js == (DEPLOY / "base" / "cube.js").read_text()


def test_the_service_leaves_the_metrics_port_out() -> None:
    service = by_kind(render("example"))[("Service", "product-analytics-proxy")]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_overlays_compose_fleet_is_example_plus_redis() -> None:
    example, fleet = by_kind(render("example")), by_kind(render("fleet"))
    assert set(example) <= set(fleet), set(example) - set(fleet)
    env = {e["name"]: e.get("value") for e in proxy_container(fleet[("Deployment", "product-analytics-proxy")]
                                                               ["spec"]["template"]["spec"])["env"]}  # fmt: skip
    assert env["PROXY_GITLAB__URL"] == "https://gitlab.example.org"  # the example's GitLab, kept
    assert env["PROXY_REDIS__URL"].startswith("redis://product-analytics-redis")
    assert fleet[("Deployment", "product-analytics-proxy")]["metadata"]["namespace"] == "analytics"
    secret = fleet[("Secret", "product-analytics-proxy-keys")]["stringData"]
    assert {"cube-api-key", "redis-signing-key", "redis-password"} <= set(secret)


@pytest.mark.parametrize("overlay", ["example", "tracing"])
async def test_the_proxy_starts_from_the_rendered_configmap_and_secret_and_answers_its_probes(
    tmp_path, cube_url, collector, overlay
) -> None:
    found = by_kind(render(overlay))
    pod = found[("Deployment", "product-analytics-proxy")]["spec"]["template"]["spec"]
    container = proxy_container(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    root = tmp_path / "pod"  # the container's filesystem, under a scratch root
    secret = found[("Secret", "product-analytics-proxy-keys")]
    configmaps = {doc["metadata"]["name"]: doc for doc in found.values() if doc["kind"] == "ConfigMap"}
    for mount in container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for key, text in configmaps[volume["configMap"]["name"]]["data"].items():
                (target / key).write_text(text)
        elif "secret" in volume:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            for item in volume["secret"]["items"]:
                (target / item["path"]).write_text(secret["stringData"][item["key"]])
    env = kubelet_env(container["env"], {"metadata.name": "proxy-7d9f-x2", "metadata.namespace": "analytics"})
    if overlay == "tracing":  # the collector's Service resolves in the cluster only: this test's receiver instead
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4318"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url.removesuffix("/v1/traces")
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
        env["OTEL_TRACES_SAMPLER_ARG"] = "1.0"  # every probe's trace kept, so the test can count them
    config_file = root / env["PROXY_CONFIG"].lstrip("/")
    assert config_file.exists(), "PROXY_CONFIG names the file the ConfigMap is mounted as"
    text = config_file.read_text()
    settings = tomllib.loads(text)
    key_file = settings["product_analytics"]["cube_api_key_file"]
    assert (root / key_file.lstrip("/")).exists(), "cube_api_key_file names a file of the mounted Secret"
    # the same file, its absolute paths moved under the scratch root; this machine's free ports; the test's Cube
    config_file.write_text(text.replace(key_file, str(root / key_file.lstrip("/"))))
    (root / key_file.lstrip("/")).write_text(CUBE_KEY)  # the fake Cube's key (the example's is a placeholder)
    port = free_port()
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    process_env.update(env)  # the container's environment, as rendered (its GitLab among it)
    process_env.update(
        {
            "PROXY_CONFIG": str(config_file),
            "PROXY_SERVER__PORT": str(port),
            "PROXY_SERVER__METRICS_PORT": str(free_port()),
            "PROXY_SERVER__METRICS_HOST": "127.0.0.1",  # this test's machine: loopback only
            "PROXY_SERVER__WORKERS": "1",
            "PROXY_SERVER__DRAIN_DELAY": "0",
            "PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL": cube_url,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy"], env=process_env, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        probes = [container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}

        def answers(probe: dict[str, Any]) -> int:
            assert named[probe["port"]] == settings["server"]["port"]  # the probe's port is the proxy's
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=5) as resp:
                return int(resp.status)

        # the fake Cube answers on this test's event loop: every blocking call runs in a thread
        await asyncio.to_thread(
            wait_until, lambda: _ok(lambda: answers(probes[0])), "the proxy as the pod starts it", 30, proc
        )
        assert [await asyncio.to_thread(answers, probe) for probe in probes] == [200, 200, 200]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        kill_group(proc.pid)
        proc.wait()
    if overlay == "tracing":  # the probes' spans, sent as the pod stopped, naming the pod they came from
        probed = {span.name for span in collector.spans}
        assert {f"GET {probe['path']}" for probe in probes} <= probed, probed
        assert {span.resource["k8s.pod.name"] for span in collector.spans} == {"proxy-7d9f-x2"}
        needed = settings["server"]["drain_delay"] + settings["server"]["shutdown_timeout"] + 5.0  # export_timeout
        assert pod["terminationGracePeriodSeconds"] > needed
    else:
        assert collector.spans == []


def kubelet_env(entries: list[dict[str, Any]], fields: dict[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet makes it: downward-API fields filled in, ``$(NAME)`` expanded from
    the variables listed before it."""
    env: dict[str, str] = {}
    for entry in entries:
        value = entry["value"] if "value" in entry else fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def _ok(call: Any) -> bool:
    try:
        return bool(call() == 200)
    except OSError:
        return False


async def test_the_fleet_overlay_renders_and_its_redis_admits_only_the_proxy_with_its_password(tmp_path) -> None:
    from proxy.settings import settings_from_mapping
    from proxy.shared.connect import redis_client
    from tests.support.redis_server import RedisServer

    docs = render("fleet")
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    found = by_kind(docs)
    policy = found[("NetworkPolicy", "product-analytics-redis")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "product-analytics-redis"}
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "product-analytics-proxy"}}}],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }
    ]
    redis_container = found[("Deployment", "product-analytics-redis")]["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis_container["image"]), "a pinned release"
    secret = found[("Secret", "product-analytics-proxy-keys")]["stringData"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis_container["env"]}
    assert env["REDIS_PASSWORD"] == {"name": "product-analytics-proxy-keys", "key": "redis-password"}
    # Redis started with the container's own arguments, $(REDIS_PASSWORD) as the kubelet expands it
    args = [a.replace("$(REDIS_PASSWORD)", secret["redis-password"]) for a in redis_container["args"]]
    server = RedisServer(tmp_path / "redis", client={"password": secret["redis-password"]}, args=args)
    server.start()
    try:
        # the proxy's settings from the rendered ConfigMap, the Secret's items at their mount path
        proxy_pod = found[("Deployment", "product-analytics-proxy")]["spec"]["template"]["spec"]
        keys = next(v for v in proxy_pod["volumes"] if v["name"] == "keys")
        mount = next(m for m in proxy_pod["containers"][0]["volumeMounts"] if m["name"] == "keys")["mountPath"]
        folder = tmp_path / "pod" / mount.lstrip("/")
        folder.mkdir(parents=True)
        for item in keys["secret"]["items"]:
            (folder / item["path"]).write_text(secret[item["key"]])
        text = found[("ConfigMap", "product-analytics-proxy-config")]["data"]["proxy.toml"]
        raw = tomllib.loads(text.replace(mount, str(folder)))
        env = {e["name"]: e["value"].replace(mount, str(folder)) for e in proxy_container(proxy_pod)["env"]}
        service = found[("Service", "product-analytics-redis")]["metadata"]["name"]
        assert service in env["PROXY_REDIS__URL"]
        env["PROXY_REDIS__URL"] = server.url  # the Service's name resolves in the cluster only
        settings = settings_from_mapping(raw, env)
        assert settings.redis.password == secret["redis-password"]
        assert settings.redis.signing_key == secret["redis-signing-key"]
        client = redis_client(settings.redis)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        without = {k: v for k, v in env.items() if k != "PROXY_REDIS__PASSWORD_FILE"}
        anonymous = redis_client(settings_from_mapping(raw, without).redis)
        try:
            with pytest.raises(Exception, match=r"(?i)auth"):
                await anonymous.ping()
        finally:
            await anonymous.aclose()
    finally:
        server.stop()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_an_overlay_lands_in_its_namespace(overlay: str) -> None:
    """A component's objects too: generated names are rewritten only within one namespace (the fleet's Redis had
    none, and a ClickHouse model ConfigMap in no namespace left the Deployment naming one without its hash)."""
    assert {doc["metadata"].get("namespace") for doc in render(overlay)} == {"analytics"}


def test_the_clickhouse_overlay_is_example_plus_clickhouse_and_names_no_database() -> None:
    example, clickhouse = by_kind(render("example")), by_kind(render("clickhouse"))
    assert set(example) <= set(clickhouse), set(example) - set(clickhouse)
    pod = clickhouse[("Deployment", "product-analytics-proxy")]["spec"]["template"]["spec"]
    [cube] = pod["initContainers"]
    sources = [next(iter(s.values()))["name"] for s in cube["envFrom"]]
    where = clickhouse[("ConfigMap", "product-analytics-cube-clickhouse")]
    assert sources == ["product-analytics-cube-database", where["metadata"]["name"]]  # the ConfigMap's, last, wins
    assert where["data"]["CUBEJS_DB_TYPE"] == "clickhouse" and where["data"]["CUBEJS_DB_PORT"] == "8123"
    secret = clickhouse[("Secret", "product-analytics-cube-database")]["stringData"]
    assert set(secret) == {"CUBEJS_DB_USER", "CUBEJS_DB_PASS"}
    assert not any("CUBEJS_DB_NAME" in str(doc) for doc in clickhouse.values() if doc["kind"] != "ConfigMap"
                   or "cube.js" not in doc["data"])  # fmt: skip
    volumes = {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}
    model = clickhouse[("ConfigMap", "product-analytics-cube-model")]
    assert volumes["cube-model"] == model["metadata"]["name"]  # the generated, hash-suffixed model
    shipped = DEPLOY / "components" / "clickhouse" / "model"
    assert model["data"] == {path.name: path.read_text() for path in shipped.glob("*.js")}
