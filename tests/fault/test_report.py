"""The fault report: whose wall time and which commit it shows; a run leaves the tree alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fault.report import REPO, render_text

RESULTS: list[dict[str, Any]] = [
    {
        "number": n,
        "title": f"scenario {n}",
        "figures": {"lost (missing)": 0, "duplicates": 0, "postgres equals truth": True},
        "seconds": seconds,
        "done": "what it does",
        "scale": "small",
        "finished_at": "2026-11-29 11:00:00 UTC",
    }
    for n, seconds in ((1, 80.5), (2, 20.0))
]


def _session(session_tests: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seconds": 1400.0,
        "tests": ["tests/fault/test_a.py::t", "tests/fault/test_b.py::t"],
        "exit status": 0,
        "finished_at": "2026-11-29 11:30:00 UTC",
    }
    if session_tests is not None:
        out["session tests"] = session_tests
    return out


def test_a_fault_only_session_reports_its_wall_time() -> None:
    text = render_text(RESULTS, _session(2))
    assert (
        "Last run of the whole suite: 1400.0 s wall time (2 tests, finished "
        "2026-11-29 11:30:00 UTC, exit status 0)." in text
    )
    # Sessions recorded before "session tests" existed read the same way.
    assert render_text(RESULTS, _session(None)) == text


def test_inside_the_whole_test_suite_the_scenarios_own_time_is_reported() -> None:
    text = render_text(RESULTS, _session(253))
    assert "1400.0 s wall time" not in text
    assert (
        "Last run of the whole suite: 2 scenario tests, 100.5 s of their own (the sum "
        "above), inside a pytest session of 1400.0 s and 253 tests" in text
    )


def test_the_report_names_the_commit_it_ran_on() -> None:
    dirty = render_text(RESULTS, {**_session(2), "commit": "0123abc", "dirty": True})
    assert "Ran on commit `0123abc` with uncommitted changes in the tree." in dirty
    clean = render_text(RESULTS, {**_session(2), "commit": "0123abc", "dirty": False})
    assert "Ran on commit `0123abc` (clean tree)." in clean
    assert "Commit unknown" in render_text(RESULTS, None)


def test_a_partial_run_reports_no_suite_wall_time() -> None:
    text = render_text(RESULTS, {**_session(2), "complete": False})
    assert "Last run of the whole suite" not in text


PROBE = """
from tests.fault.harness import write_result


def test_probe(scenario_logs):
    write_result(
        1, "probe", done="probe", scale="-", figures={"lost (missing)": 0}, seconds=0.1
    )
"""


def tree_state() -> tuple[str, dict[str, tuple[int, int]]]:
    """``git status`` and the mtime and size of every tracked file of the checkout."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    stats = {}
    for name in files:
        path = REPO / name
        if path.is_file():
            st = path.stat()
            stats[name] = (st.st_mtime_ns, st.st_size)
    return status, stats


@pytest.mark.integration
def test_a_pytest_run_of_the_fault_suite_leaves_the_tree_alone(tmp_path: Path) -> None:
    # A scenario run through this conftest (as a plugin, on a probe scenario) wrote
    # tests/fault/results/ and docs/reliability.md in the checkout.
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CONVSYNC_FAULT_RESULTS"}
    before = tree_state()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.fault.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(REPO),
            "-c",
            str(REPO / "pyproject.toml"),
            str(probe),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    after = tree_state()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    changed = sorted(n for n in after[1] if after[1][n] != before[1].get(n))
    assert changed == [], changed
    assert after[0] == before[0]
    match = re.search(r"fault suite: results and report in (\S+)", run.stdout)
    assert match, run.stdout[-2000:]
    folder = Path(match.group(1))
    assert not folder.resolve().is_relative_to(REPO)
    assert (folder / "scenario-1.json").exists()
    assert "## 1. probe" in (folder / "reliability.md").read_text()
