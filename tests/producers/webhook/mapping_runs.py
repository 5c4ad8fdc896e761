"""Run the mapper on the real Kafka for a test: in a thread, or as `convsync mapper`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from convsync.settings import Settings
from producers.webhook.mapper import Mapper, MapperConfig, Totals
from tests.producers.webhook.helpers import REPO, read_records


def config(settings: Settings, **kw: object) -> MapperConfig:
    """A mapper of ``settings``' topics with a transactional id of its own."""
    return MapperConfig.from_settings(settings, instance=f"test-{uuid.uuid4().hex[:8]}", **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def mapper_thread(settings: Settings, **kw: object) -> Iterator[Mapper]:
    """Run a :class:`Mapper` in a thread for the ``with`` block, then stop it."""
    mapper = Mapper(config(settings, **kw))
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            mapper.run(stop)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            failed.append(e)

    thread = threading.Thread(target=run, name="mapper", daemon=True)
    thread.start()
    try:
        yield mapper
    finally:
        stop.set()
        thread.join(30)
    assert not failed, failed
    assert not thread.is_alive()


def wait_for_events(
    settings: Settings, count: int, *, timeout: float = 60.0
) -> list[tuple[bytes, bytes]]:
    """Return the records of the events topic once there are ``count`` (read_committed)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(settings, "events")
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def wait_totals(mapper: Mapper, deliveries: int, *, timeout: float = 60.0) -> Totals:
    """Wait until ``mapper`` committed ``deliveries`` deliveries; return its totals."""
    deadline = time.monotonic() + timeout
    while mapper.totals.deliveries < deliveries and time.monotonic() < deadline:
        time.sleep(0.1)
    return mapper.totals


def mapper_process(
    settings: Settings, log_file: Path, instance: str, *, batch_size: int = 50
) -> subprocess.Popen[bytes]:
    """Start `convsync mapper` on ``settings``' topics (its metrics server off)."""
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_MAPPER_METRICS_ADDR": "off",
    }
    argv = [
        sys.executable,
        "-m",
        "cli",
        "mapper",
        "--instance",
        instance,
        "--batch-size",
        str(batch_size),
    ]
    with log_file.open("ab") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=out)
