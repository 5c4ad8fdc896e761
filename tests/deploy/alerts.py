"""What the alert tests read: the rules of deploy/prometheus/alerts.yaml, the metric names
their expressions use, and the crawler's metric contract of docs/operations.md."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Final

import yaml

REPO: Final = Path(__file__).resolve().parents[2]
RULES: Final = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS: Final = REPO / "deploy" / "prometheus" / "alerts_test.yaml"
OPERATIONS: Final = REPO / "docs" / "operations.md"

_METRIC: Final = re.compile(r"\bconvsync_[a-z0-9_]+\b")
# A row of the contract table: | `convsync_name{labels}` | type | meaning |
_CONTRACT_ROW: Final = re.compile(r"^\|\s*`(convsync_[a-z0-9_]+)[^`]*`\s*\|", re.MULTILINE)


def promtool() -> str:
    """Return the path of promtool (deploy/bootstrap.sh installs it in .venv/bin)."""
    path = shutil.which("promtool", path=str(REPO / ".venv" / "bin")) or shutil.which("promtool")
    assert path is not None, "promtool is missing: run `bash deploy/bootstrap.sh`"
    return path


def rules() -> list[dict[str, Any]]:
    """Return every alerting rule of alerts.yaml."""
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Return the convsync metric names an expression reads."""
    return set(_METRIC.findall(expr))


def crawler_contract() -> set[str]:
    """Return the metric names docs/operations.md promises for the crawler (its section
    "The crawler's metrics")."""
    text = OPERATIONS.read_text()
    start = text.index("## The crawler's metrics")
    end = text.find("\n## ", start + 1)
    return set(_CONTRACT_ROW.findall(text[start : end if end > 0 else None]))
