"""Envelopes through the real broker: keyed by page, same partition, order kept."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from confluent_kafka import KafkaError, Message

from convsync.kafka import TOPIC_SUFFIXES, make_consumer, make_producer
from convsync.settings import Settings
from schemas.envelope import Envelope

pytestmark = pytest.mark.integration


def _envelope(page: str, n: int) -> Envelope:
    mid = f"m_{page}_{n}"
    return Envelope.build(
        kind="message",
        page_id=page,
        psid=f"u{n % 4}",
        mid=mid,
        occurred_at=1_700_000_000_000 + n,
        source="webhook",
        direction="inbound",
        text=f"#{n} ✓",
        raw={"mid": mid},
    )


def test_page_keyed_envelopes_keep_partition_and_order(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("events")
    producer = make_producer(kafka_settings)
    pages = [f"page{i}" for i in range(8)]
    errors: list[KafkaError] = []
    partitions: dict[str, set[int]] = defaultdict(set)

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            partitions[msg.key().decode()].add(msg.partition())

    sent: dict[str, list[str]] = defaultdict(list)
    # Interleave pages so ordering is tested under mixing, not by accident.
    for n in range(50):
        for page in pages:
            env = _envelope(page, n)
            sent[page].append(env.event_id)
            producer.produce(topic, key=page.encode(), value=env.to_bytes(), on_delivery=delivered)
    assert producer.flush(30) == 0
    assert errors == []
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert len({next(iter(p)) for p in partitions.values()}) > 1, "all pages on one partition"

    consumer = make_consumer(kafka_settings, f"{kafka_settings.topic_prefix}-reader")
    consumer.subscribe([topic])
    got: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, got.values())) < 400 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            env = Envelope.from_bytes(msg.value())
            assert msg.key() == env.page_id.encode()
            got[env.page_id].append(env.event_id)
    finally:
        consumer.close()
    assert dict(got) == dict(sent)


def test_topics_have_the_requested_shape(kafka_settings: Settings) -> None:
    from convsync.kafka import admin_client

    admin = admin_client(kafka_settings)
    md = admin.list_topics(timeout=10)
    for suffix in TOPIC_SUFFIXES:
        assert len(md.topics[kafka_settings.topic(suffix)].partitions) == 12
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, kafka_settings.topic("conversations"))
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"
