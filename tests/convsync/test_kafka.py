"""Topic creation, end-offset reads and the consumer helpers of convsync.kafka, against
the real broker."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from convsync.errors import ConsumerFatalError, RetryableError
from convsync.kafka import (
    TopicSpec,
    admin_client,
    behind,
    check_record_error,
    ensure_topics,
    list_partitions,
    make_producer,
    read_record,
    read_watermarks,
    watermarks,
)
from convsync.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 12


_NAMES: list[str] = []


@pytest.fixture
def admin(stack_settings: Settings) -> Iterator[AdminClient]:
    """An admin client; the topics named by :func:`_name` during the test go after it."""
    client = admin_client(stack_settings)
    _NAMES.clear()
    yield client
    existing = set(client.list_topics(timeout=10).topics)
    gone = [n for n in _NAMES if n in existing]
    if gone:
        for fut in client.delete_topics(gone, operation_timeout=30).values():
            fut.result(timeout=30)


def _name() -> str:
    name = f"tk{uuid.uuid4().hex[:12]}"
    _NAMES.append(name)
    return name


def _fresh_consumer(settings: Settings) -> Consumer:
    return Consumer({**settings.kafka_config(), "group.id": f"g-{uuid.uuid4().hex[:8]}"})


def test_every_partition_answers_a_plain_watermark_query_once_ensure_topics_returns(
    stack_settings: Settings, admin: AdminClient
) -> None:
    # For a moment after creation the broker that the metadata names as leader refuses
    # ListOffsets with NOT_LEADER_FOR_PARTITION, and librdkafka's watermark query does
    # not retry: a caller that creates topics and reads their ends at once (as every
    # test and `convsync up` do) failed now and then. Ten rounds of twelve partitions
    # met the refusal in most runs before ensure_topics waited for it.
    for _ in range(10):
        name = _name()
        ensure_topics(admin, [TopicSpec(name, PARTITIONS, 1, {})])
        consumer = _fresh_consumer(stack_settings)
        try:
            for p in range(PARTITIONS):
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                assert (low, high) == (0, 0)
        finally:
            consumer.close()


def test_read_watermarks_waits_for_a_partition_that_appears(
    stack_settings: Settings, admin: AdminClient
) -> None:
    name = _name()
    tp = TopicPartition(name, 3)
    consumer = _fresh_consumer(stack_settings)
    try:
        # The plain query fails at once: the client knows no such partition.
        with pytest.raises(KafkaException) as refused:
            consumer.get_watermark_offsets(tp, timeout=5)
        assert refused.value.args[0].code() == KafkaError._UNKNOWN_PARTITION

        def create() -> None:
            time.sleep(1.0)
            admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(timeout=30)

        creator = threading.Thread(target=create)
        creator.start()
        assert read_watermarks(consumer, tp, timeout=30) == (0, 0)
        creator.join()
    finally:
        consumer.close()


def test_read_watermarks_gives_up_with_the_last_error_at_its_timeout(
    stack_settings: Settings, admin: AdminClient
) -> None:
    consumer = _fresh_consumer(stack_settings)
    try:
        started = time.monotonic()
        with pytest.raises(KafkaException) as gave_up:
            read_watermarks(consumer, TopicPartition(_name(), 0), timeout=2)
        waited = time.monotonic() - started
        assert gave_up.value.args[0].code() == KafkaError._UNKNOWN_PARTITION
        assert 1.0 <= waited < 10, waited
    finally:
        consumer.close()


def test_read_watermarks_counts_what_was_produced(
    stack_settings: Settings, admin: AdminClient
) -> None:
    name = _name()
    ensure_topics(admin, [TopicSpec(name, 2, 1, {})])
    producer = make_producer(stack_settings)
    for i in range(7):
        producer.produce(name, value=b"x", partition=i % 2)
    assert producer.flush(30) == 0
    consumer = _fresh_consumer(stack_settings)
    try:
        assert read_watermarks(consumer, TopicPartition(name, 0), timeout=10) == (0, 4)
        assert read_watermarks(consumer, TopicPartition(name, 1), timeout=10) == (0, 3)
    finally:
        consumer.close()


def _produce(settings: Settings, name: str, partitions: int, values: list[bytes]) -> None:
    producer = make_producer(settings)
    for i, value in enumerate(values):
        producer.produce(name, value=value, key=b"k", partition=i % partitions)
    assert producer.flush(30) == 0


def test_list_partitions_and_watermarks_of_a_topic_and_of_none(
    stack_settings: Settings, admin: AdminClient
) -> None:
    name = _name()
    ensure_topics(admin, [TopicSpec(name, 3, 1, {})])
    _produce(stack_settings, name, 3, [b"a", b"b", b"c", b"d"])
    consumer = _fresh_consumer(stack_settings)
    try:
        assert list_partitions(consumer, name) == [0, 1, 2]
        assert [watermarks(consumer, name, p) for p in range(3)] == [(0, 2), (0, 1), (0, 1)]
        # A caller retries these: both raise RetryableError, not KafkaException.
        with pytest.raises(RetryableError, match="not available"):
            list_partitions(consumer, _name(), timeout=5)
        with pytest.raises(RetryableError, match="end offsets"):
            watermarks(consumer, name, 7, timeout=1)
    finally:
        consumer.close()


def test_read_record_by_offset_and_none_once_retention_deleted_it(
    stack_settings: Settings, admin: AdminClient
) -> None:
    # A component that keeps decoded rows reads a record's original bytes back by
    # offset (the materializer's dead letter of a row Postgres refuses). A record
    # deleted meanwhile is reported as gone instead of waited for.
    name = _name()
    ensure_topics(admin, [TopicSpec(name, 1, 1, {})])
    values = [b"zero", b"one", b"two"]
    _produce(stack_settings, name, 1, values)
    for offset, value in enumerate(values):
        at = TopicPartition(name, 0, offset)
        assert read_record(stack_settings, at, group="g") == (b"k", value)
    (future,) = admin.delete_records([TopicPartition(name, 0, 2)]).values()
    future.result(timeout=30)
    assert read_record(stack_settings, TopicPartition(name, 0, 1), group="g") is None
    assert read_record(stack_settings.kafka_config(), TopicPartition(name, 0, 2), group="g") == (
        b"k",
        b"two",
    )


def test_behind_counts_records_past_the_position_of_consumed_partitions_only(
    stack_settings: Settings, admin: AdminClient
) -> None:
    name = _name()
    ensure_topics(admin, [TopicSpec(name, 2, 1, {})])
    _produce(stack_settings, name, 2, [b"x"] * 10)
    consumer = _fresh_consumer(stack_settings)
    try:
        consumer.assign([TopicPartition(name, 0, 2), TopicPartition(name, 1, 0)])
        consumer.pause([TopicPartition(name, 1)])
        msg = consumer.poll(30)
        assert msg is not None and msg.error() is None and msg.offset() == 2
        # Partition 0: 5 records, position 3. Partition 1: nothing consumed, no position.
        assert behind(consumer, name, {0: 5, 1: 5}) == {0: 2}
        assert behind(consumer, name, {0: 9}) == {0: 6}
        assert behind(consumer, name, {}) == {}
    finally:
        consumer.close()


def test_check_record_error_raises_fatal_errors_and_logs_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="convsync.kafka")
    check_record_error(KafkaError(KafkaError._PARTITION_EOF))
    assert not caplog.records
    check_record_error(KafkaError(KafkaError._TRANSPORT))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    # librdkafka reports its fatal error to a consumer as a record error of code _FATAL.
    with pytest.raises(ConsumerFatalError):
        check_record_error(KafkaError(KafkaError._FATAL))
