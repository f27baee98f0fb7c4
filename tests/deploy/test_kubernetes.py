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
import yaml

from stack.localstack import free_port, wait_until
from tests.conftest import CUBE_KEY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_is_valid_for_kubernetes(path: Path) -> None:
    kubernetes_validate.validate(load(path), KUBERNETES, strict=True)


def test_the_kustomizations_name_files_that_exist() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        data = load(kustomization)
        named = [*data.get("resources", []), *data.get("components", [])]
        named += [p["path"] for p in data.get("patches", []) if "path" in p]
        for entry in named:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry} is missing"


def deployment() -> dict[str, Any]:
    return load(DEPLOY / "base" / "deployment.yaml")


def proxy_container() -> dict[str, Any]:
    return next(c for c in deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy")


def test_the_pod_is_locked_down_and_waits_long_enough_on_shutdown() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
        assert security["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    config = tomllib.loads(load(DEPLOY / "base" / "configmap.yaml")["data"]["proxy.toml"])
    needed = config["server"]["drain_delay"] + config["server"]["shutdown_timeout"]
    assert pod["terminationGracePeriodSeconds"] > needed
    cube = next(c for c in pod["containers"] if c["name"] == "cube")
    assert "ports" not in cube  # Cube is the proxy's, on localhost
    assert [p["containerPort"] for p in proxy_container()["ports"]] == [config["server"]["port"]]


async def test_the_proxy_starts_from_the_configmap_and_the_secret_files_and_answers_its_probes(
    tmp_path, cube_url
) -> None:
    container = proxy_container()
    pod = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    root = tmp_path / "pod"  # the container's filesystem, under a scratch root
    secret = load(DEPLOY / "overlays" / "example" / "secret.yaml")
    configmap = load(DEPLOY / "base" / "configmap.yaml")
    for mount in container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            for key, text in configmap["data"].items():
                (target / key).write_text(text)
        elif "secret" in volume:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            for item in volume["secret"]["items"]:
                (target / item["path"]).write_text(secret["stringData"][item["key"]])
    env = {e["name"]: e["value"] for e in container["env"]}
    config_file = root / env["PROXY_CONFIG"].lstrip("/")
    assert config_file.exists(), "PROXY_CONFIG names the file the ConfigMap is mounted as"
    text = config_file.read_text()
    settings = tomllib.loads(text)
    key_file = settings["product_analytics"]["cube_api_key_file"]
    assert (root / key_file.lstrip("/")).exists(), "cube_api_key_file names a file of the mounted Secret"
    # the same file, its absolute paths moved under the scratch root; this machine's free port; the test's Cube
    config_file.write_text(text.replace(key_file, str(root / key_file.lstrip("/"))))
    (root / key_file.lstrip("/")).write_text(CUBE_KEY)  # the fake Cube's key (the example's is a placeholder)
    port = free_port()
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    process_env.update(
        {
            "PROXY_CONFIG": str(config_file),
            "PROXY_SERVER__PORT": str(port),
            "PROXY_SERVER__WORKERS": "1",
            "PROXY_SERVER__DRAIN_DELAY": "0",
            "PROXY_PRODUCT_ANALYTICS__CUBE_API_BASE_URL": cube_url,
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "proxy"], env=process_env, stderr=subprocess.DEVNULL)
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
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ok(call: Any) -> bool:
    try:
        return bool(call() == 200)
    except OSError:
        return False


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay: the manifests exactly as they would be applied."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


async def test_the_fleet_overlay_renders_and_its_redis_admits_only_the_proxy_with_its_password(tmp_path) -> None:
    from proxy.settings import settings_from_mapping
    from proxy.shared.connect import redis_client
    from tests.redis_server import RedisServer

    docs = render("fleet")
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
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
        service = found[("Service", "product-analytics-redis")]["metadata"]["name"]
        assert service in raw["redis"]["url"]
        raw["redis"]["url"] = server.url  # the Service's name resolves in the cluster only
        settings = settings_from_mapping(raw, {})
        assert settings.redis.password == secret["redis-password"]
        assert settings.redis.signing_key == secret["redis-signing-key"]
        client = redis_client(settings.redis)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        anonymous = redis_client(
            settings_from_mapping({**raw, "redis": {**raw["redis"], "password_file": None}}, {}).redis
        )
        try:
            with pytest.raises(Exception, match=r"(?i)auth"):
                await anonymous.ping()
        finally:
            await anonymous.aclose()
    finally:
        server.stop()
