"""Fixtures of the end-to-end fault suite; a report of the session's results at its end.

The results and that report go to :func:`tests.fault.harness.results_dir` (a temporary
folder unless ``CONVSYNC_FAULT_RESULTS`` names one), never to the tracked tree: the
committed docs/reliability.md changes only through ``python -m tests.fault.report --run``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convsync.settings import Settings
from tests.fault import report
from tests.fault.harness import results_dir
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

_RAN: list[str] = []
# Set when this conftest is imported (collection): pytest_sessionstart is not called for
# a conftest below the root, which is how the suite runs in CI (`pytest -q` from the root).
_STARTED: list[float] = [time.monotonic()]
# The commit the scenarios run on, and whether the tree differs from it, as they start.
_GIT = report.git_state()


@pytest.fixture(scope="session")
def log_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding every component log of the session's scenarios."""
    return tmp_path_factory.mktemp("fault-logs")


@pytest.fixture
def scenario_logs(log_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A log folder of the test's own, under :func:`log_root`."""
    path = log_root / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    _RAN.append(request.node.nodeid)
    yield path


@pytest.fixture
def shared(make_topics: MakeTopics, make_schema: MakeSchema) -> Settings:
    """Fresh 6-partition topics and a fresh migrated schema on the shared stack."""
    return make_schema(base=make_topics(partitions=6))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Render a report of the scenarios that ran, next to their results."""
    folder = results_dir()
    if not _RAN or not folder.is_dir():
        return
    (folder / "session.json").write_text(
        json.dumps(
            {
                "seconds": round(time.monotonic() - _STARTED[0], 1),
                "tests": sorted(_RAN),
                # A run of the whole suite: its wall time goes into the report.
                "complete": len(_RAN) >= len(report.SCENARIOS),
                # More than the scenarios when they ran inside the whole test suite:
                # "seconds" is then that session's, not theirs.
                "session tests": session.testscollected,
                "exit status": int(exitstatus),
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                **_GIT,
            },
            indent=2,
        )
        + "\n"
    )
    doc = folder / "reliability.md"
    report.render(folder, doc)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"fault suite: results and report in {folder}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the access scenario last: it scans the logs of the whole run for secrets."""
    items.sort(key=lambda item: "test_access" in item.nodeid)
