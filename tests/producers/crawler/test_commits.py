"""The crawl topic's commits (_commits.py), against the real broker: one request in
flight, carrying the latest queued position of every partition, whose answer resolves
every commit queued before it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import KafkaError, TopicPartition

from convsync.kafka import make_consumer
from convsync.settings import Settings
from producers.crawler._commits import CommitQueue

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_queued_commits_go_in_one_request_with_the_latest_positions(
    kafka_settings: Settings,
) -> None:
    topic = kafka_settings.topic("crawl")
    queue = CommitQueue()
    answers: list[list[tuple[int, int, str]]] = []
    loop = asyncio.get_running_loop()

    def on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        assert err is None, err
        queue.answered()
        answers.append([(tp.partition, tp.offset, tp.metadata or "") for tp in partitions])
        for tp in partitions:
            loop.call_soon_threadsafe(queue.release, tp.partition, (tp.offset, tp.metadata))

    group = f"commits-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(kafka_settings, group, on_commit=on_commit)
    try:
        consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
        # A page's steps queue commits faster than Kafka answers them.
        first = [queue.put(TopicPartition(topic, 0, n, f"m{n}")) for n in (1, 2, 3)]
        first.append(queue.put(TopicPartition(topic, 1, 7, "x")))
        assert queue.issue(consumer) == []
        later = [queue.put(TopicPartition(topic, 0, n, f"m{n}")) for n in (4, 5)]
        # Unanswered: the next request waits, gathering what is queued meanwhile.
        assert queue.issue(consumer) == [] and queue.requests == 1
        deadline = time.monotonic() + 30
        while not answers:
            assert time.monotonic() < deadline, "the commit was never answered"
            consumer.poll(0.05)
        assert sorted(answers[0]) == [(0, 3, "m3"), (1, 7, "x")]
        await asyncio.wait_for(asyncio.gather(*first), 5)
        assert not any(f.done() for f in later)

        assert queue.issue(consumer) == [] and queue.requests == 2
        while len(answers) < 2:
            assert time.monotonic() < deadline, "the second commit was never answered"
            consumer.poll(0.05)
        assert answers[1] == [(0, 5, "m5")]
        await asyncio.wait_for(asyncio.gather(*later), 5)
        committed = consumer.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
        assert [(tp.offset, tp.metadata) for tp in committed] == [(5, "m5"), (7, "x")]
    finally:
        consumer.close()


async def test_a_revoked_partition_s_queued_position_is_not_committed(
    kafka_settings: Settings,
) -> None:
    topic = kafka_settings.topic("crawl")
    queue = CommitQueue()
    answered: list[list[int]] = []

    def on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        queue.answered()
        answered.append([tp.partition for tp in partitions])

    consumer = make_consumer(kafka_settings, f"commits-{uuid.uuid4().hex[:8]}", on_commit=on_commit)
    try:
        consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
        queue.put(TopicPartition(topic, 0, 3, "a"))
        queue.put(TopicPartition(topic, 1, 4, "b"))
        queue.discard(1)
        assert queue.issue(consumer) == []
        deadline = time.monotonic() + 30
        while not answered:
            assert time.monotonic() < deadline, "the commit was never answered"
            consumer.poll(0.05)
        assert answered == [[0]]
    finally:
        consumer.close()
