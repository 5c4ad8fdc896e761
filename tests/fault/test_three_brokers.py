"""`convsync up --brokers 3`: SIGKILL one broker under acks=all traffic, lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from confluent_kafka import KafkaError, Message

from convsync.kafka import admin_client, make_consumer, make_producer
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.ports import free_ports
from deploy.postgres_local import LocalPostgres
from deploy.processes import pid_alive
from deploy.stack import load_info

pytestmark = [pytest.mark.fault, pytest.mark.slow]


class Stack3(NamedTuple):
    state: Path
    settings: Settings
    kafka_port: int
    pg_port: int


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack3]:
    state = tmp_path_factory.mktemp("stack3")
    # Outside the ephemeral range: the brokers bind their listeners only after the quorum
    # formed, and a client socket took a hard-coded port in between (CI, 2026-11-29).
    kafka_port = free_ports((0, 1, 10, 11, 20, 21))
    pg_port = free_ports((0, 1))
    proc = _cli(
        "up",
        "--brokers",
        "3",
        "--state-dir",
        str(state),
        "--kafka-port",
        str(kafka_port),
        "--pg-port",
        str(pg_port),
        "--partitions",
        "6",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = load_info(state)
    assert info is not None
    settings = Settings(
        kafka_bootstrap=info.kafka_bootstrap,
        database_url=info.database_dsn(),
        topic_prefix=info.topic_prefix,
        partitions=6,
    )
    try:
        yield Stack3(state, settings, kafka_port, pg_port)
    finally:
        cluster = KafkaCluster(state / "kafka-3", 3, kafka_port)
        pids = [p for n in cluster.nodes if (p := cluster.pid(n)) is not None]
        down = _cli("down", "--state-dir", str(state))
        # As root the cluster lives outside the tmp folder: remove it.
        LocalPostgres(state, pg_port).destroy()
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [p for p in pids if pid_alive(p)], "a broker survived `convsync down`"
        assert cluster.running() == []


def test_up_is_idempotent_and_topics_replicated(three_brokers: Stack3) -> None:
    state, settings = three_brokers.state, three_brokers.settings
    again = _cli(
        "up",
        "--brokers",
        "3",
        "--state-dir",
        str(state),
        "--kafka-port",
        str(three_brokers.kafka_port),
        "--pg-port",
        str(three_brokers.pg_port),
        "--partitions",
        "6",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    md = admin_client(settings).list_topics(timeout=10)
    assert len(md.brokers) == 3
    for suffix in ("events", "crawl", "conversations", "dlq"):
        parts = md.topics[settings.topic(suffix)].partitions
        assert len(parts) == 6
        assert all(len(p.replicas) == 3 for p in parts.values())
    env = _cli("env", "--state-dir", str(state))
    assert f"export CONVSYNC_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}" in env.stdout


def test_sigkill_one_broker_loses_nothing(three_brokers: Stack3) -> None:
    state, settings = three_brokers.state, three_brokers.settings
    topic = settings.topic("events")
    cluster = KafkaCluster(state / "kafka-3", 3, three_brokers.kafka_port)
    producer = make_producer(settings, **{"message.timeout.ms": 60000})
    acked: set[str] = set()
    failed: list[KafkaError] = []
    lock = threading.Lock()

    def delivered(err: KafkaError | None, msg: Message) -> None:
        with lock:
            if err is None:
                acked.add((msg.value() or b"").decode())
            else:
                failed.append(err)

    total = 6000
    victim = 2
    victim_pid = cluster.pid(cluster.node(victim))
    assert victim_pid is not None
    for i in range(total):
        producer.produce(
            topic, key=f"page{i % 40}".encode(), value=f"v{i}".encode(), on_delivery=delivered
        )
        producer.poll(0)
        if i == total // 3:
            os.kill(victim_pid, signal.SIGKILL)
        if i % 200 == 0:
            time.sleep(0.02)  # spread the writes over the broker's failure and recovery
    assert producer.flush(90) == 0
    assert failed == []
    assert not pid_alive(victim_pid)
    assert len(acked) == total

    consumer = make_consumer(settings, "three-broker-reader")
    consumer.subscribe([topic])
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    try:
        while len(seen) < total and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen.add((msg.value() or b"").decode())
    finally:
        consumer.close()
    assert acked - seen == set(), f"{len(acked - seen)} acknowledged records lost"

    # The broker comes back and rejoins; the cluster is whole again.
    cluster.start_node(victim)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(admin_client(settings).list_topics(timeout=5).brokers) == 3:
            break
        time.sleep(0.5)
    assert len(admin_client(settings).list_topics(timeout=5).brokers) == 3
