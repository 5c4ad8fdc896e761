"""The streams worker keeps the command's log redaction when faust starts."""

from __future__ import annotations

import time

import pytest

from convsync.settings import Settings
from tests.fixtures.kafka import MakeTopics
from tests.streams.conftest import StartWorker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_faust_lines_are_redacted_too(
    make_topics: MakeTopics, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: Settings = make_topics(partitions=2)
    # The topic prefix doubles as the database password: a secret that faust's own
    # lines name ("Creating topic '<prefix>.streams-...'") once the worker runs.
    secret = settings.topic_prefix
    monkeypatch.setenv("CONVSYNC_TEST_WORKER_LOG_LEVEL", "INFO")
    worker = start_worker(
        settings, env={"CONVSYNC_DATABASE_URL": f"postgresql://convsync:{secret}@127.0.0.1:1/x"}
    )
    deadline = time.monotonic() + 120
    while "Creating topic" not in worker.log.read_text(errors="replace"):
        assert worker.proc.poll() is None, worker.tail()
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.3)
    worker.stop()
    log = worker.log.read_text(errors="replace")
    assert "Creating topic '***.streams" in log
    assert secret not in log
