"""Benchmark: `convsync mapper`'s events/s and CPU per event on the real local Kafka.

Signed simulator bodies (the gateway bench's mix: 1-3 events each, several pages) are
admitted as the gateway does, their deliveries produced to fresh topics, then a mapper
(in this process, the same loop `convsync mapper` runs) maps them all into the events
topic in Kafka transactions. Printed: deliveries and events, wall seconds from the
mapper's start to its last commit, events/s, and the process's CPU (all threads:
librdkafka's included) per event; then the pure mapping alone (``map_delivery``) in a
tight loop, µs per event. Run with the local stack up::

    .venv/bin/python tests/bench/bench_mapper.py [--bodies 20000] [--batch 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cli.common import load_settings
from convsync.kafka import admin_client, ensure_topics, make_producer, topic_specs
from deploy.simulator.webhooks import WebhookSender
from producers.webhook.admit import Accepted, admit
from producers.webhook.deliveries import map_delivery
from producers.webhook.mapper import Mapper, MapperConfig

SECRET = "bench-mapper-secret"


def deliveries(n: int) -> list[tuple[bytes, bytes]]:
    """The deliveries of ``n`` signed simulator bodies (pages p0..p49)."""
    sender = WebhookSender(SECRET, seed=11)
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        body = sender.batch([f"{1000 + i % 50}"], items_per_page=1 + i % 3)
        decision = admit(
            SECRET.encode(),
            body.raw,
            body.headers["X-Hub-Signature-256"],
            max_record_bytes=4 << 20,
            received_at=int(time.time() * 1000),
        )
        assert isinstance(decision, Accepted)
        out += decision.records
    return out


def one_round(records: list[tuple[bytes, bytes]], batch: int) -> tuple[int, float, float]:
    """Map ``records`` on fresh topics; return (events, wall seconds, CPU seconds)."""
    settings = load_settings().model_copy(update={"topic_prefix": f"bm{uuid.uuid4().hex[:8]}"})
    admin = admin_client(settings)
    specs = topic_specs(settings)
    ensure_topics(admin, specs)
    try:
        producer = make_producer(settings, **{"linger.ms": 20})
        for key, value in records:
            while True:
                try:
                    producer.produce(settings.topic("deliveries"), value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(60)
        mapper = Mapper(
            MapperConfig.from_settings(settings, instance=f"bench-{os.getpid()}", max_records=batch)
        )
        stop = threading.Event()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        thread = threading.Thread(target=mapper.run, args=(stop,), daemon=True)
        thread.start()
        while mapper.totals.deliveries < len(records):
            time.sleep(0.01)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stop.set()
        thread.join(30)
        return mapper.totals.events, wall, cpu
    finally:
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            fut.result(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="deliveries per transaction")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    records = deliveries(args.bodies)
    print(f"{len(records)} deliveries of {args.bodies} bodies, batch {args.batch}")
    for r in range(args.rounds):
        events, wall, cpu = one_round(records, args.batch)
        print(
            f"round {r + 1}: {events} events in {wall:.2f} s: {events / wall:,.0f} events/s, "
            f"{len(records) / wall:,.0f} deliveries/s, CPU {cpu / events * 1e6:.1f} µs/event "
            f"({cpu / wall:.2f} cores)"
        )
    t0 = time.process_time()
    n = sum(len(map_delivery(value).records) for _, value in records)
    took = time.process_time() - t0
    print(f"map_delivery alone: {took / n * 1e6:.1f} µs/event ({n} events)")


if __name__ == "__main__":
    main()
