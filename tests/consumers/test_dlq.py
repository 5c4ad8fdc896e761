"""Dead letters of the materializer stay under Kafka's record limit, whatever the poison."""

from __future__ import annotations

import random
import uuid

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from consumers.materializer import Materializer
from convsync.kafka import admin_client
from convsync.settings import Settings
from schemas.records import (
    TRUNCATED_HEADER,
    VALUE_BYTES_HEADER,
    VALUE_COPY_LIMIT,
    DeadLetter,
)
from tests.consumers.helpers import conversations, expected, produce, random_events, wait_for
from tests.consumers.test_materializer import FAST, running, stored_end
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

# Under the producer's default message.max.bytes (1,000,000): Kafka takes the record, but
# a whole base64 copy of it (1.32 MB) would be refused.
BIG = 990_000


def read_letters(settings: Settings, want: int) -> list[tuple[DeadLetter, dict[str, bytes]]]:
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("dlq")])
    out: list[tuple[DeadLetter, dict[str, bytes]]] = []
    try:
        for _ in range(120):
            for msg in consumer.consume(10, timeout=0.5):
                assert msg.error() is None
                headers = {k: v or b"" for k, v in msg.headers() or []}
                out.append((DeadLetter.model_validate_json(msg.value() or b""), headers))
            if len(out) >= want:
                break
    finally:
        consumer.close()
    return out


def test_a_990_kb_poison_record_is_dead_lettered_and_consumption_goes_on(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=2))
    events = random_events(random.Random(5), pages=2, users=6, n=80)
    poison = b"{" + b"x" * (BIG - 1)  # not JSON: poison
    total = produce(settings, events[:40]) + produce(settings, [poison], key=b"p0")
    total += produce(settings, events[40:])
    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat):
        wait_for(lambda: stored_end(settings, group) == total, timeout=90, what="all offsets")
    assert conversations(settings) == expected(events)
    [(letter, headers)] = read_letters(settings, 1)
    assert letter.component == "materializer"
    assert letter.original_value() == poison[:VALUE_COPY_LIMIT]
    assert headers[TRUNCATED_HEADER] == b"value"
    assert headers[VALUE_BYTES_HEADER] == str(BIG).encode()
    assert f"{letter.topic}[{letter.partition}]@{letter.offset}" in letter.reason
    assert mat.totals.dead_letters == 1


def test_a_letter_the_dlq_topic_refuses_is_sent_without_copies(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # A DLQ topic whose max.message.bytes is lower than the bounded letter: the letter goes
    # again without the copies (where to find the original is enough), never forever.
    settings = make_schema(base=make_topics(partitions=1))
    entry = ConfigEntry("max.message.bytes", "4000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(
        ResourceType.TOPIC, settings.topic("dlq"), incremental_configs=[entry]
    )
    admin = admin_client(settings)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    events = random_events(random.Random(6), pages=1, users=3, n=20)
    poison = b"[" + random.Random(1).randbytes(40_000)  # incompressible: over 4000 bytes
    total = produce(settings, events[:10]) + produce(settings, [poison], key=b"p0")
    total += produce(settings, events[10:])
    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat):
        wait_for(lambda: stored_end(settings, group) == total, timeout=90, what="all offsets")
    [(letter, headers)] = read_letters(settings, 1)
    assert letter.key_b64 is None and letter.value_b64 is None
    assert headers[TRUNCATED_HEADER] == b"key,value"
    assert conversations(settings) == expected(events)
