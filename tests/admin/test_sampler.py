"""The dashboard's sampler: one consumer and one connection for its whole life, bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from admin import AdminSettings
from admin.dashboard import Sampler
from convsync.db import connect
from convsync.kafka import make_producer
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def wait_taken(sampler: Sampler, n: int) -> None:
    deadline = time.monotonic() + 60
    while sampler.taken < n:
        assert time.monotonic() < deadline, f"{sampler.taken} samples, errors {sampler.errors}"
        await asyncio.sleep(0.05)


async def test_samples_reuse_one_consumer_and_one_connection(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=2))
    producer = make_producer(settings)
    for i in range(12):
        letter = b'{"reason": "r%d", "failed_at": %d}' % (i, 1000 + i)
        producer.produce(settings.topic("dlq"), value=letter, partition=i % 2)
    assert producer.flush(30) == 0
    sampler = Sampler(settings, AdminSettings(sample_seconds=0.02, samples=5, dlq_tail=3))
    await sampler.ensure_running()
    try:
        await wait_taken(sampler, 30)
        reader = sampler.reader
        assert (reader.consumers_made, reader.connections_made) == (1, 1)
        # Bounded, whatever the history: the ring buffer, the DLQ tail, the errors.
        assert len(sampler.samples) == 5
        assert [e["reason"] for e in sampler.dlq] == ["r11", "r10", "r9"]
        assert sampler.errors == []
        # Its Postgres connection dies: the next samples report it, then reconnect once.
        assert reader._conn is not None
        pid = reader._conn.info.backend_pid
        with connect(settings) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        taken = sampler.taken
        await wait_taken(sampler, taken + 5)
        await wait_taken(sampler, sampler.taken + 5)
        assert reader.connections_made == 2 and reader.consumers_made == 1
        assert sampler.errors == []
    finally:
        await sampler.stop()
    assert sampler.reader._consumer is None and sampler.reader._conn is None
