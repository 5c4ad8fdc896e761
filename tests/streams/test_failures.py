"""A batch whose effects Kafka refuses is never acked: the worker crashes, nothing skipped.

Real faults on the real broker: a topic whose ``max.message.bytes`` refuses the
worker's writes (the sink, the table changelog, the dead-letter topic) and a poison
event too large to be copied whole into a dead letter.
"""

from __future__ import annotations

import base64
import random
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from convsync.kafka import TopicSpec, admin_client, ensure_topics, make_producer
from convsync.settings import Settings
from schemas.envelope import Envelope
from schemas.records import DeadLetter
from streams.agent import CRASH_EXIT_CODE
from streams.app import app_id
from streams.change import MemorySide, StreamState, step
from streams.deadletter import TRUNCATED_HEADER, VALUE_BYTES_HEADER, VALUE_COPY_LIMIT
from tests.fixtures.kafka import MakeTopics
from tests.streams.conftest import StartWorker, Worker, read_changes
from tests.streams.events import conversation_events, produce
from tests.streams.test_app import complete, dedupe
from tests.streams.test_change import fold_all
from tests.streams.test_kill import committed_to_end

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]


def committed(settings: Settings) -> list[int]:
    """Return the app group's committed offset of every events partition (< 0: none)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": app_id(settings)})
    topic = settings.topic("events")
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def set_max_message_bytes(settings: Settings, topic: str, value: str | None) -> None:
    """Set a topic's ``max.message.bytes`` (``None``: back to the broker's default)."""
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", value or "", incremental_operation=op)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = admin_client(settings)
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)


def wait_crashed(worker: Worker, settings: Settings, *, timeout: float, most: int = -1) -> int:
    """Wait for ``worker`` to exit; fail as soon as its group committed an offset past
    ``most`` (-1: any offset)."""
    deadline = time.monotonic() + timeout
    while worker.proc.poll() is None:
        offsets = committed(settings)
        assert all(o <= most for o in offsets), (
            f"offsets {offsets} committed past a batch Kafka refused\n{worker.tail()}"
        )
        if time.monotonic() > deadline:
            pytest.fail(f"the worker did not exit in {timeout} s\n{worker.tail()}")
        time.sleep(0.5)
    return worker.proc.returncode


def first_seal(evs: list[Envelope]) -> int:
    """Return the index of the first event of ``evs`` whose fold seals a chunk of
    digests (the first write to ``conversation-digests``)."""
    side = MemorySide()
    states: dict[str, StreamState] = {}
    for i, ev in enumerate(evs):
        key = f"{ev.page_id}:{ev.psid}"
        result = step(states.get(key), ev, side)
        if result.chunk is not None:
            return i
        side.record(result)
        states[key] = result.state
    raise AssertionError("no event seals a chunk")


@pytest.mark.parametrize("refusing", ["sink", "changelog", "digests"])
def test_a_write_kafka_refuses_crashes_the_worker_then_a_restart_resumes(
    make_topics: MakeTopics, start_worker: StartWorker, refusing: str
) -> None:
    settings = make_topics(partitions=2)
    # A change record or a conversation state is a few hundred bytes, a sealed chunk of
    # digests 2 KiB: over 200, every write to that topic is refused (MESSAGE_TOO_LARGE).
    # A changelog is created here as faust would (the worker leaves an existing topic as
    # it is).
    if refusing == "sink":
        topic = settings.topic("conversations")
        set_max_message_bytes(settings, topic, "200")
    else:
        table = "conversations" if refusing == "changelog" else "conversation-digests"
        topic = f"{app_id(settings)}-{table}-changelog"
        conf = {"cleanup.policy": "compact", "max.message.bytes": "200"}
        ensure_topics(admin_client(settings), [TopicSpec(topic, settings.partitions, 1, conf)])
    if refusing == "digests":
        # Two conversations of ~300 messages: each seals a chunk of 256 digests, which
        # must be durable before any record that counts it (or the restart would count
        # those messages again, or find the chunk missing).
        evs = conversation_events(random.Random(21), pages=1, users=2, messages=600)
    else:
        evs = conversation_events(random.Random(21), pages=3, users=4, messages=200)
    produce(make_producer(settings), settings.topic("events"), evs)

    # The first refused write comes with the batch that folds event ``most``: the batches
    # before it were confirmed and may be committed (faust commits every second, and
    # once more on the way out), that one and the ones after it never. With one page,
    # every event is on one partition, at its index in ``evs``.
    most = first_seal(evs) if refusing == "digests" else -1
    worker = start_worker(settings, batch_size=50)
    code = wait_crashed(worker, settings, timeout=90, most=most)
    assert code == CRASH_EXIT_CODE, worker.tail()
    assert "a batch failed; exiting without acking it" in worker.tail()
    assert all(o <= most for o in committed(settings)), (committed(settings), most)

    # Once Kafka takes the writes again, a restart folds every event from the
    # committed offsets: every change, none renumbered, replays identical.
    set_max_message_bytes(settings, topic, None)
    again = start_worker(settings, batch_size=50)
    _, want = fold_all(evs)
    records = read_changes(settings, until=complete(want), timeout=90, worker=again)
    assert dedupe(records) == {(r.key, r.seq): r for r in want}
    assert committed_to_end(settings, timeout=30), "the restarted worker stopped committing"


def read_dead_letters(
    settings: Settings, n: int, *, timeout: float
) -> list[tuple[DeadLetter, dict[str, bytes]]]:
    """Read ``n`` dead letters (with their headers) from the start of ``<prefix>.dlq``."""
    consumer = Consumer(
        {**settings.kafka_config(), "group.id": f"{settings.topic_prefix}.dlq-reader"}
    )
    topic = settings.topic("dlq")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    out: list[tuple[DeadLetter, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"{len(out)} of {n} dead letters in {timeout} s")
            for msg in consumer.consume(100, timeout=0.5):
                assert msg.error() is None, msg.error()
                letter = DeadLetter.model_validate_json(msg.value())
                out.append((letter, dict(msg.headers() or [])))
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize("dlq_limit", [None, "4000"])
def test_poison_too_large_to_copy_is_dead_lettered_and_the_stream_goes_on(
    make_topics: MakeTopics, start_worker: StartWorker, dlq_limit: str | None
) -> None:
    # An 800 KB poison event: its dead letter with a whole base64 copy (1.07 MB) is over
    # the producer's limit, so it keeps the first VALUE_COPY_LIMIT bytes. With the DLQ's
    # max.message.bytes at 4000 even that is refused: the letter goes without copies.
    settings = make_topics(partitions=2)
    if dlq_limit is not None:
        set_max_message_bytes(settings, settings.topic("dlq"), dlq_limit)
    evs = conversation_events(random.Random(5), pages=2, users=5, messages=300)
    poison = b'{"x":"' + b"a" * 800_000 + b'"}'
    producer = make_producer(settings)
    produce(producer, settings.topic("events"), evs[:100])
    producer.produce(settings.topic("events"), key=b"p0", value=poison)
    produce(producer, settings.topic("events"), evs[100:])

    worker = start_worker(settings, batch_size=50)
    _, want = fold_all(evs)
    records = read_changes(settings, until=complete(want), timeout=90, worker=worker)
    assert dedupe(records) == {(r.key, r.seq): r for r in want}
    [(letter, headers)] = read_dead_letters(settings, 1, timeout=30)
    assert letter.component == "streams" and letter.topic == settings.topic("events")
    assert headers[VALUE_BYTES_HEADER] == str(len(poison)).encode()
    assert letter.key_b64 is not None or dlq_limit is not None
    if dlq_limit is None:
        assert headers[TRUNCATED_HEADER] == b"value"
        assert letter.original_value() == poison[:VALUE_COPY_LIMIT]
        assert base64.b64decode(letter.key_b64 or "") == b"p0"
    else:
        assert headers[TRUNCATED_HEADER] == b"key,value"
        assert letter.value_b64 is None and letter.key_b64 is None
    assert "copy truncated" in letter.reason and f"@{letter.offset}" in letter.reason
    assert committed_to_end(settings, timeout=30), "offsets did not reach the end"
    assert worker.proc.poll() is None, worker.tail()
