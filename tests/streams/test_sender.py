"""The fold's librdkafka writes (streams/sender.py) on the real broker: each record in the
partition the fold chose, every ack awaited, a refused write raised, nothing left after
close."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from convsync.errors import RetryableError
from convsync.kafka import make_consumer
from convsync.settings import Settings
from streams.app import app_id
from streams.broker import broker_urls
from streams.faust_fixes import FixedApp
from streams.folder import Folder
from streams.sender import RdSender
from streams.stats import PageStats
from tests.fixtures.kafka import MakeTopics
from tests.streams.test_failures import set_max_message_bytes

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def read_partitions(settings: Settings, topic: str, n: int) -> dict[int, list[bytes]]:
    """Read ``n`` records of ``topic`` from the start: their keys by partition."""
    consumer = make_consumer(settings, f"{settings.topic_prefix}.reader")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    out: dict[int, list[bytes]] = {}
    try:
        for _ in range(60):
            for msg in consumer.consume(100, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.setdefault(msg.partition(), []).append(msg.key())
            if sum(map(len, out.values())) >= n:
                break
    finally:
        consumer.close()
    return out


async def test_records_go_to_the_chosen_partitions_in_order_and_are_acked(
    make_topics: MakeTopics,
) -> None:
    settings = make_topics(partitions=3)
    topic = settings.topic("conversations")
    sender = RdSender(settings)
    # The same key in two partitions: librdkafka's partitioner would put both in one.
    outbox = {
        0: [(b"k", b"a"), (b"k2", b"b")],
        2: [(b"k", b"c"), *((f"n{i}".encode(), b"x" * 100) for i in range(500))],
    }
    counts = await asyncio.gather(*sender.send(topic, outbox))
    assert sorted(counts) == [2, 501]
    await sender.close()
    got = read_partitions(settings, topic, 503)
    assert got == {p: [k for k, _ in records] for p, records in outbox.items()}


async def test_a_refused_write_raises_and_close_returns(make_topics: MakeTopics) -> None:
    settings = make_topics(partitions=2)
    topic = settings.topic("conversations")
    set_max_message_bytes(settings, topic, "200")
    sender = RdSender(settings)
    try:
        waits = sender.send(topic, {0: [(b"k", b"ok")], 1: [(b"big", bytes(range(256)) * 8)]})
        results = await asyncio.gather(*waits, return_exceptions=True)
    finally:
        await asyncio.wait_for(sender.close(), 30)
    assert results[0] == 1
    assert isinstance(results[1], RetryableError), results[1]
    assert "not delivered" in str(results[1])


async def test_the_fold_writes_through_librdkafka_under_at_least_once(
    make_topics: MakeTopics, tmp_path: Path
) -> None:
    # faust's own producer is never started here: the fold's writes do not need it.
    settings = make_topics(partitions=2)
    app = FixedApp(app_id(settings), broker=broker_urls(settings), datadir=str(tmp_path))
    folder = Folder(app, settings, PageStats(app, partitions=2))
    topic = settings.topic("conversations")
    try:
        sent = await folder._send(topic, {1: [(b"a:b", b"{}")]})
        assert await asyncio.gather(*sent) == [1]
    finally:
        await folder.sender.close()
    assert read_partitions(settings, topic, 1) == {1: [b"a:b"]}
