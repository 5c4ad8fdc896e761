"""The lag gauges' end offsets come from a thread of their own (convsync/ends.py): it
learns them from the real broker, and while it waits for an answer the materializer goes
on storing batches."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from consumers.materializer import BatchConfig, Materializer
from convsync.ends import EndsProbe
from convsync.kafka import make_consumer, make_producer
from tests.consumers.helpers import conversations, expected, produce, random_events, wait_for
from tests.consumers.test_materializer import running, stored_end
from tests.fixtures.ends import unanswered_probe
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration


def test_the_probe_learns_the_ends_of_the_partitions_it_is_asked_for(
    make_topics: MakeTopics,
) -> None:
    settings = make_topics(partitions=2)
    events, dlq = settings.topic("events"), settings.topic("dlq")
    producer = make_producer(settings)
    for topic, partition, n in ((events, 0, 3), (events, 1, 1), (dlq, 0, 2)):
        for i in range(n):
            producer.produce(topic, value=b"x%d" % i, partition=partition)
    assert producer.flush(30) == 0

    probe = EndsProbe(settings.kafka_config(), "g-probe", (events, dlq), interval=0.05)
    try:
        assert probe.ends(events) == {}  # nothing wanted yet
        probe.want({0})
        wait_for(lambda: probe.ends(dlq) == {0: 2}, timeout=30, what="the DLQ end")
        assert probe.ends(events) == {0: 3}
        probe.want({0, 1})
        wait_for(lambda: probe.ends(events) == {0: 3, 1: 1}, timeout=30, what="both ends")
        assert probe.ends(dlq) == {0: 2, 1: 0}
        probe.want({1})  # partition 0 given away: its figures go at once
        assert probe.ends(events) == {1: 1}
        assert probe.ends(dlq) == {1: 0}
    finally:
        started = time.monotonic()
        probe.close()
    assert time.monotonic() - started < 10


def test_the_probe_learns_how_far_the_group_committed(make_topics: MakeTopics) -> None:
    # The mapper's lag is the end minus the group's committed offset (its transactions'),
    # or minus the low watermark where the group committed nothing.
    settings = make_topics(partitions=2)
    topic = settings.topic("deliveries")
    producer = make_producer(settings)
    for partition, n in ((0, 5), (1, 3)):
        for i in range(n):
            producer.produce(topic, value=b"d%d" % i, partition=partition)
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex[:12]}"
    committer = make_consumer(settings, group)
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    finally:
        committer.close()

    probe = EndsProbe(settings.kafka_config(), group, (topic,), interval=0.05, committed=True)
    try:
        probe.want({0, 1})
        wait_for(lambda: probe.done(topic) == {0: 2, 1: 0}, timeout=30, what="committed")
        assert probe.ends(topic) == {0: 5, 1: 3}
    finally:
        probe.close()


def test_a_probe_waiting_for_the_broker_holds_up_no_batch(
    make_topics: MakeTopics, make_schema: MakeSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker never answers the end-offset queries (until the end): the consume loop,
    # which once asked them itself, stores every event meanwhile.
    settings = make_schema(base=make_topics(partitions=2))
    probe = unanswered_probe(monkeypatch)
    events = random_events(random.Random(23), pages=4, users=10, n=300)
    group = f"g-{uuid.uuid4().hex[:12]}"
    batch = BatchConfig(max_records=50, max_wait=0.05, idle_poll=0.2, lag_interval=0.01)
    mat = Materializer.from_settings(settings, group=group, batch=batch, report_lag=True)
    try:
        with running(mat):
            produce(settings, events)
            wait_for(
                lambda: stored_end(settings, group) == len(events),
                timeout=60,
                what="every event stored while the probe waits",
            )
            assert probe.asked.is_set() and not probe.answer.is_set()
            probe.answer.set()
    finally:
        probe.answer.set()
    assert conversations(settings) == expected(events)
