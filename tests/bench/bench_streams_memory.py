"""Benchmark: RSS of a `convsync streams` worker before and after folding a long stream.

A warm-up part of the events is folded first (tables, producer and fetch buffers
allocated), then the RSS of the worker process is read; then the rest is produced and
folded and the RSS read again. The growth is what the worker keeps per event: the
conversation states with their folded message ids, the statistics windows, and
whatever faust keeps.

    .venv/bin/python -m tests.bench.bench_streams_memory --messages 40000

Needs the stack (`convsync up`). To compare with another checkout of the code, run the
same command from that checkout with ``PYTHONPATH`` pointing at it (the worker is started
as ``python -m convsync.cli streams`` and inherits the environment).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from convsync.kafka import admin_client, make_producer
from convsync.settings import Settings
from deploy.ports import free_ports
from streams.app import app_id
from tests.bench.bench_streams import fresh
from tests.fixtures.stack import _stack_settings
from tests.streams.events import conversation_events, produce
from tests.streams.test_change import fold_all


def rss_mb(pid: int) -> float:
    """Return the resident set size of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_records(reader: Consumer, seen: int, expected: int, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 600
    while seen < expected:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"worker failed with {seen}/{expected} change records")
        seen += len(reader.consume(1000, timeout=0.5))
    return seen


def run(settings: Settings, warmup: int, messages: int, pages: int, users: int) -> None:
    evs = conversation_events(random.Random(5), pages=pages, users=users, messages=messages)
    cut = next(i for i, e in enumerate(evs) if i >= warmup and e.kind == "message")
    first, second = evs[:cut], evs[cut:]
    want_first = len(fold_all(first)[1])
    want_all = len(fold_all(evs)[1])
    producer = make_producer(settings)
    produce(producer, settings.topic("events"), first)
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_PARTITIONS": str(settings.partitions),
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }
    reader = Consumer({**settings.kafka_config(), "group.id": "bench-memory-reader"})
    topic = settings.topic("conversations")
    reader.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "cli", "streams", "--web-port", str(free_ports())]
        proc = subprocess.Popen([*args, "--data-dir", tmp], env=env)
        try:
            seen = wait_records(reader, 0, want_first, proc)
            time.sleep(3)  # let the last batch's changelog writes and commit settle
            before = rss_mb(proc.pid)
            produce(producer, settings.topic("events"), second)
            wait_records(reader, seen, want_all, proc)
            time.sleep(3)
            after = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            reader.close()
    print(f"{len(first)} warm-up events, then {len(second)} more ({pages * users} conversations)")
    print(f"RSS after warm-up: {before:.1f} MB; after all events: {after:.1f} MB")
    print(f"growth: {after - before:.1f} MB = {(after - before) * 1e6 / len(second):.0f} B/event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--warmup", type=int, default=4_000)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--users", type=int, default=400)
    args = parser.parse_args()
    settings, specs = fresh(_stack_settings(), [])
    try:
        run(settings, args.warmup, args.messages, args.pages, args.users)
    finally:
        admin = admin_client(settings)
        names = [s.name for s in specs]
        names += [t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id(settings))]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(timeout=30)


if __name__ == "__main__":
    main()
