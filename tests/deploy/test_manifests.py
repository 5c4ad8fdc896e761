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
        if doc["kind"] in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            if doc["kind"] == "Deployment":
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
    assert {"kafka", "postgres", "gateway", "crawler", "materializer", "streams"} <= set(services)
    for name in ("gateway", "crawler", "materializer", "streams"):
        assert services[name]["command"][0] in commands, name
    init = services["init"]["entrypoint"][2]
    for part in init.split("&&"):
        assert part.split()[1] in commands
