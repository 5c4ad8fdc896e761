"""Benchmark: one dashboard sample with long-lived clients vs fresh clients per sample.

One run, same machine, same Kafka and Postgres, fresh topics (12 partitions, 60 DLQ
records) and a fresh schema, the rounds interleaved:

(a) ``fresh``: a new :class:`StatusReader` per sample (a new consumer and a new Postgres
    connection every time, as the sampler did before it kept them), librdkafka's default
    ``fetch.wait.max.ms`` (500);
(b) ``fresh, fetch wait 10 ms``: the same with the reader's fetch wait;
(c) ``kept``: one reader for every sample, as the sampler does now.

Each sample is what the sampler does every 2 s: ``collect()`` and ``dlq_tail(20)``.
Prints the median and p90 per sample and the ratios against (a).

    .venv/bin/python -m tests.bench.bench_sampler [--samples 30]

Needs the stack (`convsync up`). Other tests sharing the CPU make the figures noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer
from psycopg import sql

from admin.status import StatusReader
from cli.common import load_settings
from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, make_producer, topic_specs
from convsync.settings import Settings
from schemas.migrate import apply_migrations


class DefaultFetchWait(StatusReader):
    """A reader whose consumer keeps librdkafka's default fetch wait (500 ms)."""

    def _kafka(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self.settings.kafka_config(),
                    "group.id": "convsync-status",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                }
            )
        return self._consumer


def sample(reader: StatusReader) -> None:
    status = reader.collect()
    assert status.errors == [], status.errors
    assert len(reader.dlq_tail(20)) == 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    base = load_settings()
    settings: Settings = base.model_copy(
        update={
            "topic_prefix": f"bench-sampler-{uuid.uuid4().hex[:8]}",
            "db_schema": f"bench_sampler_{uuid.uuid4().hex[:8]}",
            "partitions": 12,
        }
    )
    admin = admin_client(settings)
    specs = topic_specs(settings)
    ensure_topics(admin, specs)
    with connect(settings) as conn:
        apply_migrations(conn, schema=settings.db_schema)
    producer = make_producer(settings)
    for i in range(60):
        letter = b'{"reason": "bench %d", "failed_at": %d}' % (i, i)
        producer.produce(settings.topic("dlq"), value=letter, partition=i % 12)
    assert producer.flush(30) == 0
    kept = StatusReader(settings, timeout=5.0)
    ways: dict[str, Callable[[], Any]] = {
        "fresh (before)": lambda: _fresh(DefaultFetchWait(settings, timeout=5.0)),
        "fresh, fetch wait 10 ms": lambda: _fresh(StatusReader(settings, timeout=5.0)),
        "kept (now)": lambda: sample(kept),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(args.samples):
            for name, way in ways.items():
                began = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - began)
    finally:
        kept.close()
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            fut.result(timeout=30)
        with connect(settings) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(settings.db_schema))
            )
    before = statistics.median(times["fresh (before)"])
    print(f"{args.samples} samples each, interleaved; ms per sample (collect + dlq_tail(20))")
    print(f"{'way':26} {'median':>8} {'p90':>8} {'ratio':>7}")
    for name, values in times.items():
        med = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[8]
        print(f"{name:26} {med * 1000:8.1f} {p90 * 1000:8.1f} {med / before:7.2f}")


def _fresh(reader: StatusReader) -> None:
    with reader:
        sample(reader)


if __name__ == "__main__":
    main()
