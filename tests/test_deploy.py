"""The Kubernetes manifests and the Dockerfile agree with the code: ports
and addresses with the settings, probe service names with the proto
services, grace periods with the drain, ConfigMap keys with real settings,
selectors with labels. (`docker build` is not run here.)"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilothouse.app.settings import Settings
from pilothouse.app.startup import (
    AGENT_SERVICE,
    RUN_SERVICE,
    STREAM_GRACE_S,
)
from pilothouse.auth import check_exposure
from pilothouse.rpc.serving import Keepalive
from pilothouse.toolexecutor.main import ToolsSettings
from pilothouse.toolexecutor.service import SERVICE_NAME as EXECUTOR_SERVICE
from pilothouse.v1 import agent_service_pb2, run_service_pb2, tool_executor_service_pb2

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
#: Seconds between the end of the drain and the kubelet's SIGKILL, at least.
MARGIN_S = 5


def load_all() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = load_all()


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def port_named(c: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets from its ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    c = container(deployment)
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(find("Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def split_address(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


RUNTIME = find("Deployment", "pilothouse-runtime")
TOOLS = find("Deployment", "pilothouse-tools")


def test_every_manifest_parses_and_kustomize_lists_them():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    kinds = sorted(d["kind"] for d in DOCS)
    assert kinds.count("Deployment") == 2
    assert kinds.count("PodDisruptionBudget") == 2
    assert kinds.count("Service") == 2
    assert {"ConfigMap", "Secret", "ServiceAccount"} <= set(kinds)
    for doc in DOCS:
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_probe_service_names_are_the_proto_services():
    assert RUN_SERVICE == run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name
    assert AGENT_SERVICE == agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
    assert EXECUTOR_SERVICE == (
        tool_executor_service_pb2.DESCRIPTOR.services_by_name["ToolExecutorService"].full_name
    )
    runtime, tools = container(RUNTIME), container(TOOLS)
    # Readiness follows the dependencies (RunService); liveness only the process.
    assert runtime["readinessProbe"]["grpc"]["service"] == RUN_SERVICE
    assert runtime["livenessProbe"]["grpc"]["service"] == AGENT_SERVICE
    assert runtime["startupProbe"]["grpc"]["service"] == AGENT_SERVICE
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert tools[probe]["grpc"]["service"] == EXECUTOR_SERVICE
        # The kubelet's gRPC probes speak plaintext: the health-only port.
        assert runtime[probe]["grpc"]["port"] == port_named(runtime, "health")
        assert tools[probe]["grpc"]["port"] == port_named(tools, "health")
    runtime_env, tools_env = env_of(RUNTIME), env_of(TOOLS)
    assert split_address(runtime_env["PILOTHOUSE_HEALTH_LISTEN_ADDRESS"]) == (
        "0.0.0.0", port_named(runtime, "health"))
    assert split_address(tools_env["PILOTHOUSE_TOOLS_HEALTH_LISTEN_ADDRESS"]) == (
        "0.0.0.0", port_named(tools, "health"))
    assert port_named(runtime, "health") != port_named(runtime, "grpc")


def test_runtime_ports_and_addresses_match_the_settings():
    env = env_of(RUNTIME)
    host, port = split_address(env["PILOTHOUSE_LISTEN_ADDRESS"])
    assert host == "0.0.0.0"  # reachable from the kubelet and other pods
    assert port == port_named(container(RUNTIME), "grpc")
    assert int(env["PILOTHOUSE_METRICS_PORT"]) == Settings.model_fields["metrics_port"].default
    assert int(env["PILOTHOUSE_METRICS_PORT"]) == port_named(container(RUNTIME), "metrics")
    assert env["PILOTHOUSE_METRICS_HOST"] == "0.0.0.0"
    annotations = RUNTIME["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port_named(container(RUNTIME), "metrics")
    service = find("Service", "pilothouse")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": port, "metrics": int(env["PILOTHOUSE_METRICS_PORT"]),
    }


def test_tools_ports_and_addresses_match_the_settings_and_the_runtime():
    env = env_of(TOOLS)
    host, port = split_address(env["PILOTHOUSE_TOOLS_LISTEN_ADDRESS"])
    assert host == "0.0.0.0"
    assert port == port_named(container(TOOLS), "grpc")
    assert port == split_address(ToolsSettings.model_fields["tools_listen_address"].default)[1]
    metrics = int(env["PILOTHOUSE_TOOLS_METRICS_PORT"])
    assert metrics == ToolsSettings.model_fields["tools_metrics_port"].default
    assert metrics == port_named(container(TOOLS), "metrics")
    assert env["PILOTHOUSE_TOOLS_METRICS_HOST"] == "0.0.0.0"
    assert container(TOOLS)["command"] == ["pilothouse-tools"]
    # The runtime reaches the executors through their (headless) Service.
    service = find("Service", "pilothouse-tools")
    assert service["spec"]["clusterIP"] == "None"
    target = env_of(RUNTIME)["PILOTHOUSE_TOOL_EXECUTORS"]
    match = re.fullmatch(r"dns:///([a-z0-9.-]+):(\d+)", target)
    assert match, target
    assert match.group(1).split(".")[0] == service["metadata"]["name"]
    assert int(match.group(2)) == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")


def test_config_keys_are_real_settings_and_valid(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PILOTHOUSE_"):
            monkeypatch.delenv(name)
    runtime_env = env_of(RUNTIME)
    for key in runtime_env:
        if key.startswith("PILOTHOUSE_"):
            assert key.removeprefix("PILOTHOUSE_").lower() in Settings.model_fields, key
        else:
            assert key.startswith("OTEL_"), key
    for key, value in runtime_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.listen_address == runtime_env["PILOTHOUSE_LISTEN_ADDRESS"]
    assert settings.tool_executors == [runtime_env["PILOTHOUSE_TOOL_EXECUTORS"]]
    assert settings.log_format == "json"
    for key in runtime_env:
        monkeypatch.delenv(key)

    tools_env = env_of(TOOLS)
    for key in tools_env:
        if key.startswith("PILOTHOUSE_"):
            assert key.removeprefix("PILOTHOUSE_").lower() in ToolsSettings.model_fields, key
    for key, value in tools_env.items():
        monkeypatch.setenv(key, value)
    assert ToolsSettings().tools_listen_address == tools_env["PILOTHOUSE_TOOLS_LISTEN_ADDRESS"]


def liveness_tolerance(c: dict[str, Any]) -> int:
    probe = c["livenessProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_grace_periods_cover_the_drain():
    runtime_grace = float(env_of(RUNTIME)["PILOTHOUSE_SHUTDOWN_GRACE"])
    pod = RUNTIME["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pod >= runtime_grace + STREAM_GRACE_S + MARGIN_S
    # Every service is NOT_SERVING while draining: liveness must not kill the drain.
    assert liveness_tolerance(container(RUNTIME)) >= pod

    tools_grace = float(env_of(TOOLS)["PILOTHOUSE_TOOLS_SHUTDOWN_GRACE"])
    tools_pod = TOOLS["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert tools_pod >= tools_grace + MARGIN_S
    assert liveness_tolerance(container(TOOLS)) >= tools_pod
    # A tool call cut by the executor's drain would be cut by its deadline anyway.
    assert tools_grace <= float(env_of(RUNTIME)["PILOTHOUSE_TOOL_TIMEOUT"])


def test_keepalive_pings_respect_the_servers_ping_policy():
    runtime_env, tools_env = env_of(RUNTIME), env_of(TOOLS)
    server_min = float(tools_env["PILOTHOUSE_GRPC_MIN_PING_INTERVAL"])
    assert Settings.model_fields["tool_keepalive_time"].default >= server_min
    assert float(runtime_env["PILOTHOUSE_GRPC_MIN_PING_INTERVAL"]) <= 30  # the SDK pings every 30 s
    from pilothouse.client.client import CHANNEL_OPTIONS

    sdk_ping_ms = dict(CHANNEL_OPTIONS)["grpc.keepalive_time_ms"]
    assert sdk_ping_ms / 1000 >= Keepalive().min_ping_interval_s


@pytest.mark.parametrize("deployment", [RUNTIME, TOOLS], ids=["runtime", "tools"])
def test_pods_are_non_root_bounded_and_selected(deployment):
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    c = container(deployment)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    selected = [
        d for d in DOCS
        if d["kind"] in {"Service", "PodDisruptionBudget"}
        and (d["spec"].get("selector", {}).get("matchLabels") or d["spec"].get("selector", {}))
        .items() <= labels.items()
    ]
    assert sorted(d["kind"] for d in selected) == ["PodDisruptionBudget", "Service"]
    pdb = next(d for d in selected if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def secret_files(deployment: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Every file the pod's Secret volumes provide: path → (Secret, read-only)."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    files = {}
    for mount in container(deployment).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" not in volume:
            continue
        secret = find("Secret", volume["secret"]["secretName"])
        for key in secret["stringData"]:
            files[f"{mount['mountPath']}/{key}"] = (secret["metadata"]["name"], mount.get("readOnly", False))
    return files


@pytest.mark.parametrize("deployment, settings_class, listen_key", [
    (RUNTIME, Settings, "PILOTHOUSE_LISTEN_ADDRESS"),
    (TOOLS, ToolsSettings, "PILOTHOUSE_TOOLS_LISTEN_ADDRESS"),
], ids=["runtime", "tools"])
def test_servers_are_secured_with_mounted_secrets(deployment, settings_class, listen_key, monkeypatch):
    for name in list(os.environ):
        if name.startswith("PILOTHOUSE_"):
            monkeypatch.delenv(name)
    env = env_of(deployment)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_class()
    # TLS on, authentication required, and the server would start on 0.0.0.0.
    assert settings.server_tls is not None
    assert "none" not in settings.auth and not settings.allow_unauthenticated
    check_exposure(settings, env[listen_key], "manifest")
    # Every file a setting names comes from a Secret mounted read-only.
    files = secret_files(deployment)
    named = {k: v for k, v in env.items() if k.startswith("PILOTHOUSE_") and k.endswith("_FILE")}
    assert named, "no TLS or auth files configured"
    for key, path in named.items():
        assert path in files, f"{key}={path} is in no mounted Secret"
        assert files[path][1], f"{files[path][0]} is not mounted read-only"
    tls_secret = find("Secret", files[env["PILOTHOUSE_TLS_CERT_FILE"]][0])
    assert tls_secret["type"] == "kubernetes.io/tls"


def test_the_runtime_reaches_tools_and_replicas_over_tls_with_its_certificate(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PILOTHOUSE_"):
            monkeypatch.delenv(name)
    for key, value in env_of(RUNTIME).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    for tls in (settings.tool_executors_client_tls, settings.peer_client_tls):
        assert tls is not None and tls.ca_file is not None and tls.cert_file is not None
    tools = ToolsSettings(**{
        k.removeprefix("PILOTHOUSE_").lower(): v for k, v in env_of(TOOLS).items()
        if k.startswith("PILOTHOUSE_")
    })
    assert tools.auth == ["mtls"] and tools.tls_client_ca_file is not None


# --- the Dockerfile -------------------------------------------------------------

DOCKER = DOCKERFILE.read_text()


def dockerfile_uid() -> int:
    user = re.findall(r"^USER\s+(\S+)", DOCKER, re.MULTILINE)[-1]
    return int(user.split(":")[0])


def test_dockerfile_is_slim_non_root_and_matches_the_code():
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", DOCKER, re.MULTILINE)
    assert bases and "slim" in bases[0]
    assert dockerfile_uid() != 0
    env = dict(re.findall(r"(PILOTHOUSE_[A-Z_]+)=(\S+)", DOCKER))
    assert split_address(env["PILOTHOUSE_LISTEN_ADDRESS"]) == ("0.0.0.0", port_named(container(RUNTIME), "grpc"))
    assert split_address(env["PILOTHOUSE_TOOLS_LISTEN_ADDRESS"]) == ("0.0.0.0", port_named(container(TOOLS), "grpc"))
    assert env["PILOTHOUSE_METRICS_HOST"] == env["PILOTHOUSE_TOOLS_METRICS_HOST"] == "0.0.0.0"
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", DOCKER, re.MULTILINE).group(1).split()}
    assert exposed == {
        port_named(container(d), name)
        for d in (RUNTIME, TOOLS) for name in ("grpc", "metrics", "health")
    }
    assert split_address(env["PILOTHOUSE_HEALTH_LISTEN_ADDRESS"])[1] == port_named(container(RUNTIME), "health")
    assert split_address(env["PILOTHOUSE_TOOLS_HEALTH_LISTEN_ADDRESS"])[1] == port_named(container(TOOLS), "health")
    assert re.search(r'^ENTRYPOINT \["pilothouse-server"\]$', DOCKER, re.MULTILINE)  # exec form: PID 1
    assert re.search(r"^STOPSIGNAL SIGTERM$", DOCKER, re.MULTILINE)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'pilothouse-server = "pilothouse.app.main:main"' in pyproject
    assert 'pilothouse-tools = "pilothouse.toolexecutor.main:main"' in pyproject
    # What the image copies is what the wheels are built from: the server's
    # package and the SDK distribution it depends on by path.
    assert "COPY server/pilothouse server/pilothouse" in DOCKER
    assert '"server/pilothouse"' in pyproject
    assert "COPY clients/python clients/python" in DOCKER
    assert "{root:uri}/clients/python" in pyproject
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().split()
    client = tomllib.loads((REPO / "clients" / "python" / "pyproject.toml").read_text())
    for needed in ("server/pilothouse/**", "clients/python/pyproject.toml",
                   f"clients/python/{client['project']['readme']}", "clients/python/pilothouse/**"):
        assert f"!{needed}" in ignore
