"""Fixtures of the end-to-end fault suite; renders docs/reliability.md at session end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convsync.settings import Settings
from tests.fault import report
from tests.fault.harness import RESULTS
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

_RAN: list[str] = []
# Set when this conftest is imported (collection): pytest_sessionstart is not called for
# a conftest below the root, which is how the suite runs in CI (`pytest -q` from the root).
_STARTED: list[float] = [time.monotonic()]


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
    """Render docs/reliability.md from the results of the scenarios (when any ran)."""
    if _RAN and RESULTS.is_dir():
        if len(_RAN) >= len(report.SCENARIOS):
            # A run of the whole suite: its wall time goes into the report too.
            (RESULTS / "session.json").write_text(
                json.dumps(
                    {
                        "seconds": round(time.monotonic() - _STARTED[0], 1),
                        "tests": sorted(_RAN),
                        # More than the scenarios when they ran inside the whole test
                        # suite: "seconds" is then that session's, not theirs.
                        "session tests": session.testscollected,
                        "exit status": int(exitstatus),
                        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    },
                    indent=2,
                )
                + "\n"
            )
        # Results elsewhere (CONVSYNC_FAULT_RESULTS): the report goes next to them.
        doc = report.DOC if RESULTS == report.RESULTS else RESULTS / "reliability.md"
        report.render(RESULTS, doc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the access scenario last: it scans the logs of the whole run for secrets."""
    items.sort(key=lambda item: "test_access" in item.nodeid)
