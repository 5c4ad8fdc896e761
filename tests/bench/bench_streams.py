"""Benchmark: events/s through the faust change stream vs a plain confluent-kafka loop.

Both read the same pre-loaded ``<prefix>.events`` and publish the same change records
(the fold of :mod:`streams.change`); the plain loop is the limit of this design: one
process, state in a dict, no changelog. Timing starts at each side's first record and
ends when its last change record is acknowledged (faust: read back from the sink).

    .venv/bin/python -m tests.bench.bench_streams --events 20000

Needs the stack (`convsync up`). Prints both rates and their ratio (target >= 0.5).
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
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from convsync.kafka import (
    TopicSpec,
    admin_client,
    ensure_topics,
    make_consumer,
    make_producer,
    topic_specs,
)
from convsync.settings import Settings
from schemas.conversation import conversation_key
from schemas.envelope import Envelope
from streams.app import app_id
from streams.change import StreamState, step, to_record
from tests.fixtures.stack import _stack_settings
from tests.streams.conftest import free_port
from tests.streams.events import conversation_events, produce
from tests.streams.test_change import fold_all


def baseline(settings: Settings, expected: int) -> float:
    """Run the plain consume-fold-produce loop; return its events/s."""
    out_topic = settings.topic("baseline")
    consumer = make_consumer(settings, f"{settings.topic_prefix}.baseline")
    consumer.subscribe([settings.topic("events")])
    producer = make_producer(settings)
    states: dict[str, StreamState] = {}
    events = emitted = 0
    started: float | None = None
    try:
        while emitted < expected:
            batch = consumer.consume(1000, timeout=1.0)
            if not batch:
                continue
            started = started or time.perf_counter()
            for msg in batch:
                event = Envelope.from_bytes(msg.value())
                key = conversation_key(event.page_id, event.psid)
                result = step(states.get(key), event)
                states[key] = result.state
                events += 1
                if result.emitted:
                    record = to_record(result, event)
                    producer.produce(out_topic, key=key.encode(), value=record.to_bytes())
                    emitted += 1
                producer.poll(0)
                consumer.store_offsets(message=msg)
            # The same guarantee as the faust app: records acknowledged, then offsets.
            producer.flush(30)
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert started is not None
    return events / (time.perf_counter() - started)


def through_faust(settings: Settings, expected: int, n_events: int) -> float:
    """Run `convsync streams` over the topic; return its events/s (first to last record)."""
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_PARTITIONS": str(settings.partitions),
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }
    reader = Consumer({**settings.kafka_config(), "group.id": "bench-reader"})
    topic = settings.topic("conversations")
    reader.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    with tempfile.TemporaryDirectory() as tmp:
        cli = Path(sys.executable).parent / "convsync"
        args = [str(cli), "streams", "--web-port", str(free_port()), "--data-dir", tmp]
        proc = subprocess.Popen(args, env=env)
        seen = 0
        first = last = 0.0
        try:
            deadline = time.monotonic() + 600
            while seen < expected:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"faust run failed with {seen}/{expected} records")
                msgs = reader.consume(1000, timeout=0.5)
                if msgs:
                    first = first or time.perf_counter()
                    last = time.perf_counter()
                    seen += len(msgs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            reader.close()
    return n_events / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()

    base = _stack_settings()
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}"})
    admin = admin_client(settings)
    specs = [*topic_specs(settings), TopicSpec(settings.topic("baseline"), 12, 1, {})]
    ensure_topics(admin, specs)
    try:
        rng = random.Random(42)
        evs = conversation_events(rng, pages=args.pages, users=args.users, messages=args.events)
        expected = len(fold_all(evs)[1])
        produce(make_producer(settings), settings.topic("events"), evs)
        print(f"{len(evs)} events -> {expected} change records, {settings.partitions} partitions")

        faust_rate = through_faust(settings, expected, len(evs))
        print(f"faust app (convsync streams): {faust_rate:,.0f} events/s")
        plain_rate = baseline(settings, expected)
        print(f"plain confluent-kafka loop:   {plain_rate:,.0f} events/s")
        print(f"ratio faust / plain: {faust_rate / plain_rate:.2f} (target >= 0.5)")
    finally:
        names = [s.name for s in specs]
        names += [t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id(settings))]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(timeout=30)


if __name__ == "__main__":
    main()
