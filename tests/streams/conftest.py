"""Fixtures of the change-stream tests: `convsync streams` workers as real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from convsync.kafka import admin_client
from convsync.settings import Settings
from deploy.ports import free_ports
from schemas.conversation import ConversationChange
from streams.app import app_id

CONVSYNC = Path(sys.executable).parent / "convsync"


@dataclass
class Worker:
    """One `convsync streams` subprocess."""

    proc: subprocess.Popen[bytes]
    web_port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=5) as resp:  # noqa: S310
            return bytes(resp.read())

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no commit."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Return ``start(settings)``: run a worker for ``settings``' topic prefix.

    Every worker is stopped after the test, and the table topics faust created for
    the prefix are deleted.
    """
    workers: list[Worker] = []
    prefixes: list[Settings] = []

    def start(
        settings: Settings,
        *,
        batch_size: int = 1000,
        guarantee: str = "at_least_once",
        env: dict[str, str] | None = None,
    ) -> Worker:
        port = free_ports()
        log = tmp_path / f"worker{len(workers)}.log"
        env = {
            **os.environ,
            **(env or {}),
            "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
            "CONVSYNC_PARTITIONS": str(settings.partitions),
            "CONVSYNC_LOG_LEVEL": os.environ.get("CONVSYNC_TEST_WORKER_LOG_LEVEL", "WARNING"),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(CONVSYNC),
                    "streams",
                    "--web-port",
                    str(port),
                    "--data-dir",
                    str(tmp_path / "streams-data"),
                    "--batch-size",
                    str(batch_size),
                    "--guarantee",
                    guarantee,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, port, log)
        workers.append(worker)
        prefixes.append(settings)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    for settings in {s.topic_prefix: s for s in prefixes}.values():
        admin = admin_client(settings)
        internal = [
            t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id(settings))
        ]
        if internal:
            for fut in admin.delete_topics(internal, operation_timeout=30).values():
                fut.result(timeout=30)


def read_changes(
    settings: Settings,
    *,
    until: Callable[[list[ConversationChange]], bool],
    timeout: float,
    worker: Worker | None = None,
) -> list[ConversationChange]:
    """Read ``<prefix>.conversations`` from the start until ``until(records)`` holds.

    Fails the test after ``timeout`` seconds, or as soon as ``worker`` exits.
    """
    topic = settings.topic("conversations")
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"{settings.topic_prefix}.test-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    records: list[ConversationChange] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(records):
            if time.monotonic() > deadline:
                tail = worker.tail() if worker is not None else ""
                pytest.fail(f"timed out with {len(records)} change records\n{tail}")
            if worker is not None and worker.proc.poll() is not None:
                pytest.fail(f"worker exited {worker.proc.returncode}:\n{worker.tail()}")
            for msg in consumer.consume(1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                record = ConversationChange.from_bytes(msg.value())
                assert msg.key() == record.key.encode()
                records.append(record)
    finally:
        consumer.close()
    return records
