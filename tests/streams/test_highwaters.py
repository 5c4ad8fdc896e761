"""F5 of streams/faust_fixes.py: table recovery learns where a changelog
partition ends from the broker, not from a fetch that may not have happened yet.

Real Kafka and a real aiokafka consumer (the one faust's consumer thread holds), with
a committed and an open transaction on the partition; the consumer thread is reduced to
the one method the fix reads. The two-worker test in test_app.py shows the same through
real workers (it failed in CI when a worker "recovered" empty tables).
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.faust_fixes import highwaters_from_the_broker
from tests.fixtures.kafka import MakeTopics

pytestmark = [pytest.mark.asyncio, pytest.mark.integration]


class _Thread:
    """faust's consumer thread as the fix uses it: it hands out its aiokafka consumer."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        return self.consumer


class _Consumer:
    def __init__(self, thread: _Thread) -> None:
        self._thread: Any = thread


async def test_the_end_of_an_unfetched_partition_is_its_last_stable_offset(
    make_topics: MakeTopics,
) -> None:
    settings = make_topics(partitions=1)
    topic = settings.topic("events")
    producer = Producer({**settings.kafka_config(), "transactional.id": f"hw-{uuid.uuid4()}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=b"committed %d" % i, partition=0)
    producer.commit_transaction(30)
    # A transaction still open: its records are past the last stable offset.
    producer.begin_transaction()
    for i in range(2):
        producer.produce(topic, key=b"k", value=b"open %d" % i, partition=0)
    producer.flush(30)

    aio = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await aio.start()
    try:
        tp = TopicPartition(topic, 0)
        aio.assign([tp])
        # What faust read under exactly_once: the fetcher has not fetched it yet.
        assert aio.last_stable_offset(tp) is None
        # Without the fix: faust's own answer, read as an empty changelog.
        faust_thread: Any = SimpleNamespace(
            consumer=SimpleNamespace(in_transaction=True), _ensure_consumer=lambda: aio
        )
        assert await AIOKafkaConsumerThread._highwaters(faust_thread, [tp]) == {tp: None}
        consumer = _Consumer(_Thread(aio))
        highwaters_from_the_broker(consumer)
        ends = await consumer._thread._highwaters([tp])
        # Five committed records and their commit marker; the open ones do not count.
        assert ends == {tp: 6}
    finally:
        await aio.stop()
        producer.abort_transaction(30)
