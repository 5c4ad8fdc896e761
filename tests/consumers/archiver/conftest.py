"""Fixtures of the archiver tests: the fake CDN and a recording listener in a thread, and
Kafka topics + a Postgres schema of the test's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from convsync.settings import Settings
from deploy.simulator.media import MediaServer
from tests.consumers.archiver.support import LoopThread, Pipeline, Recorder


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def media(loop_thread: LoopThread) -> Iterator[MediaServer]:
    """The fake CDN, with 3 MiB "huge" files (the tests' limit is 1 MiB)."""
    server = MediaServer(huge_bytes=3 * 1024 * 1024)
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture
def recorder(loop_thread: LoopThread) -> Iterator[Recorder]:
    rec = Recorder()
    loop_thread.run(rec.start())
    yield rec
    loop_thread.run(rec.stop())


@pytest.fixture
def pipeline(
    make_topics: Callable[..., Settings], make_schema: Callable[..., Settings]
) -> Pipeline:
    """Three-partition topics and a migrated schema of this test's own."""
    return Pipeline(make_schema(base=make_topics(partitions=3)))
