"""The compose file and Kubernetes manifests parse and run commands that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from cli.main import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"


def _commands() -> set[str]:
    group = typer.main.get_command(app)
    commands: dict[str, Any] = getattr(group, "commands", {})
    assert commands, "the CLI has no commands"
    return set(commands)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _convsync_args(container: dict[str, Any]) -> list[str]:
    if "args" in container:
        return list(container["args"])
    command = container["command"]
    assert command[:2] == ["sh", "-c"], command
    return [part.split()[1] for part in command[2].split("&&")]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifest_is_well_formed(path: Path) -> None:
    commands = _commands()
    for doc in _docs(path):
        assert {"apiVersion", "kind"} <= doc.keys(), path
        if doc["kind"] == "Kustomization":
            for resource in doc["resources"]:
                assert (K8S / resource).exists(), resource
            continue
        assert doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            spec = doc["spec"]["template"]["spec"]
            if doc["kind"] in ("Deployment", "StatefulSet"):
                labels = doc["spec"]["template"]["metadata"]["labels"]
                for key, value in doc["spec"]["selector"]["matchLabels"].items():
                    assert labels[key] == value
            for container in spec["containers"]:
                args = _convsync_args(container)
                assert args[0] in commands, f"{path.name}: convsync {args[0]} does not exist"
                refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
                assert refs == {"convsync"}


def test_compose_services_run_existing_commands() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    commands = _commands()
    services = compose["services"]
    names = ("gateway", "mapper", "crawler", "materializer", "streams")
    assert {"kafka", "postgres", *names} <= set(services)
    for name in names:
        assert services[name]["command"][0] in commands, name
    init = services["init"]["entrypoint"][2]
    for part in init.split("&&"):
        assert part.split()[1] in commands


def test_the_admin_port_is_never_exposed() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs(K8S / "gateway.yaml")}
    [container] = docs[("Deployment", "convsync-gateway")]["spec"]["template"]["spec"]["containers"]
    assert "--admin-port=8081" in container["args"]
    assert {p["name"] for p in container["ports"]} == {"http", "admin"}
    public = docs[("Service", "convsync-gateway")]["spec"]
    assert [p["targetPort"] for p in public["ports"]] == ["http"]
    private = docs[("Service", "convsync-gateway-admin")]["spec"]
    assert private.get("type", "ClusterIP") == "ClusterIP"
    assert [p["targetPort"] for p in private["ports"]] == ["admin"]
    for path in K8S.glob("*.yaml"):
        for doc in _docs(path):
            if doc["kind"] == "Ingress":
                backends = yaml.safe_dump(doc)
                assert "convsync-gateway-admin" not in backends, path
            if doc["kind"] == "Service" and doc["spec"].get("type") in ("LoadBalancer", "NodePort"):
                assert all(p["targetPort"] != "admin" for p in doc["spec"]["ports"]), path
    policy = docs[("NetworkPolicy", "convsync-gateway")]["spec"]["ingress"]
    admin_rule = next(r for r in policy if r["ports"] == [{"port": "admin"}])
    assert admin_rule["from"], "the admin port must not be open to every source"
    # Compose publishes it on the host's loopback only.
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    assert "--admin-port=8081" in gateway["command"]
    assert "127.0.0.1:8081:8081" in gateway["ports"]
    assert not any(p.endswith(":8081") and not p.startswith("127.0.0.1:") for p in gateway["ports"])


@pytest.mark.parametrize(
    ("name", "port"), [("materializer", 9463), ("streams", 9464), ("mapper", 9466)]
)
def test_metrics_and_healthz_are_served_in_the_cluster(name: str, port: int) -> None:
    [deployment] = _docs(K8S / f"{name}.yaml")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    [container] = pod["spec"]["containers"]
    assert f"--metrics-addr=0.0.0.0:{port}" in container["args"]
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][name]
    assert f"--metrics-addr=0.0.0.0:{port}" in compose["command"]
    assert compose["ports"] == [f"127.0.0.1:{port}:{port}"]
