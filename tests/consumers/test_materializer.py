"""The materializer end to end on the real Kafka and Postgres: exactly once, DLQ, replay."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY
from psycopg import sql

from consumers.materializer import BatchConfig, Materializer, checksum, replay
from consumers.materializer.dlq import Poison
from consumers.materializer.store import BatchResult
from convsync.db import connect
from convsync.errors import RetryableError
from convsync.kafka import admin_client, ensure_topics, make_consumer, read_watermarks, topic_specs
from convsync.settings import Settings
from tests.consumers.helpers import (
    conversations,
    expected,
    produce,
    random_events,
    scalar,
    wait_for,
    with_duplicates,
)
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

FAST = BatchConfig(max_records=500, max_wait=0.05, idle_poll=0.2)


@contextmanager
def running(mat: Materializer) -> Iterator[threading.Thread]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            mat.run()
        except BaseException as e:
            errors.append(e)
            raise

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        mat.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert not errors, errors


def stored_end(settings: Settings, group: str) -> int:
    return int(
        scalar(
            settings,
            'SELECT COALESCE(sum(next_offset), 0) FROM {s}.consumer_offsets WHERE "group" = %s',
            group,
        )
    )


def read_dlq(settings: Settings, want: int) -> list[dict[str, object]]:
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"dlq-reader-{random.random()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("dlq")])
    out: list[dict[str, object]] = []
    try:
        for _ in range(100):
            for msg in consumer.consume(10, timeout=0.5):
                assert msg.error() is None
                out.append(orjson.loads(msg.value() or b"null"))
            if len(out) >= want:
                break
    finally:
        consumer.close()
    return out


def test_exactly_once_poison_idempotence_and_replay(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    rng = random.Random(7)
    settings = make_schema(base=make_topics(partitions=4))
    events = random_events(rng, pages=6, users=20, n=1500)
    delivered = with_duplicates(rng, events, 0.3)
    # The third: an event whose raw item holds a string that is not UTF-8.
    broken = events[0].to_bytes().replace(b'"raw":{', b'"raw":{"x":"\xed\xa0\x80",', 1)
    poison = [b"\xff not json", b'{"schema_version": 1, "kind": "message"}', broken]
    total = produce(settings, delivered[:700]) + produce(settings, poison)
    total += produce(settings, delivered[700:])

    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat):
        wait_for(lambda: stored_end(settings, group) == total, timeout=60, what="all offsets")
    assert conversations(settings) == expected(events)
    assert scalar(settings, "SELECT count(*) FROM {s}.events") == len({e.event_id for e in events})
    assert mat.totals.dead_letters == 3
    labels = {"group": group}
    assert REGISTRY.get_sample_value("convsync_materializer_events_in_total", labels) == total
    assert REGISTRY.get_sample_value("convsync_materializer_dead_letters_total", labels) == 3
    assert REGISTRY.get_sample_value("convsync_materializer_events_inserted_total", labels) == len(
        {e.event_id for e in events}
    )
    # Every conversation write bumps its version by one: the two tallies agree.
    changes = REGISTRY.get_sample_value("convsync_materializer_conversation_changes_total", labels)
    assert changes == scalar(settings, "SELECT sum(version) FROM {s}.conversations")

    letters = read_dlq(settings, 3)
    assert sorted(base64.b64decode(str(d["value_b64"])) for d in letters) == sorted(poison)
    assert all(d["component"] == "materializer" and d["reason"] for d in letters)
    assert {d["topic"] for d in letters} == {settings.topic("events")}

    # Re-delivery of everything: no row changes, no version moves.
    versions = scalar(settings, "SELECT sum(version) FROM {s}.conversations")
    produce(settings, delivered)
    mat2 = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat2):
        wait_for(
            lambda: stored_end(settings, group) == total + len(delivered),
            timeout=60,
            what="re-delivered offsets",
        )
    assert mat2.totals.inserted == 0
    assert scalar(settings, "SELECT sum(version) FROM {s}.conversations") == versions
    assert conversations(settings) == expected(events)

    # Replay from offset 0 into a fresh schema gives the same projection.
    fresh = make_schema(migrate=False)
    result = replay(settings, into=fresh.db_schema, config=FAST)
    assert result.totals.records == total + len(delivered)
    live = checksum(settings, settings.db_schema)
    assert checksum(settings, fresh.db_schema) == live
    assert conversations(settings, fresh.db_schema) == expected(events)

    # The command line does the same and prints both checksums.
    cli = make_schema(migrate=False)
    out = subprocess.run(
        [sys.executable, "-m", "cli", "replay", "--into", cli.db_schema],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out == [cli.db_schema, checksum(settings, cli.db_schema), settings.db_schema, live]
    assert out[1] == live


def test_assignment_resumes_from_postgres_offsets_not_kafka(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=2))
    events = random_events(random.Random(3), pages=4, users=5, n=200)
    produce(settings, events)
    group = f"g-{uuid.uuid4().hex[:12]}"
    # This group never committed to Kafka: without the Postgres cursor it would start at
    # the beginning. Postgres says partition 0 is done and partition 1 half done.
    consumer = Consumer({**settings.kafka_config(), "group.id": group})
    ends = [
        read_watermarks(consumer, TopicPartition(settings.topic("events"), p), timeout=10)[1]
        for p in (0, 1)
    ]
    consumer.close()
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                'INSERT INTO {}.consumer_offsets ("group", topic, "partition", next_offset)'
                " VALUES (%s, %s, 0, %s), (%s, %s, 1, %s)"
            ).format(sql.Identifier(settings.db_schema)),
            (
                group,
                settings.topic("events"),
                ends[0],
                group,
                settings.topic("events"),
                ends[1] // 2,
            ),
        )
    mat = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat):
        wait_for(lambda: stored_end(settings, group) == sum(ends), timeout=60, what="partition 1")
    assert mat.totals.records == ends[1] - ends[1] // 2


def test_a_batch_is_flushed_once_its_record_values_reach_max_bytes(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=2))
    events = random_events(random.Random(11), pages=4, users=10, n=400)
    chunks = [events[i : i + 40] for i in range(0, len(events), 40)]
    chunk_bytes = min(sum(len(e.to_bytes()) for e in chunk) for chunk in chunks)
    # Neither max_records nor max_wait (a minute) flushes a batch here: only max_bytes.
    config = BatchConfig(
        max_records=1_000_000, max_wait=60, max_bytes=chunk_bytes // 2, idle_poll=0.2
    )
    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, batch=config)
    written: list[int] = []
    write = mat.store.write_batch

    def counting_write(**kwargs: Any) -> BatchResult:
        written.append(len(kwargs["rows"]))
        return write(**kwargs)

    mat.store.write_batch = counting_write  # type: ignore[method-assign]
    with running(mat):
        produce(settings, chunks[0])
        # A first commit: the member is assigned and consuming.
        wait_for(lambda: stored_end(settings, group) > 0, timeout=60, what="a first batch")
        for chunk in chunks[1:]:
            produce(settings, chunk)
            time.sleep(0.3)
        # Each chunk is two caps' worth: all but the last chunk's tail is flushed.
        wait_for(
            lambda: stored_end(settings, group) >= len(events) - len(chunks[-1]),
            timeout=30,
            what="batches flushed by size",
        )
        assert len(written) >= 5, written
        assert max(written) < len(events) // 2, written
    # Stopping flushes the rest; every event once.
    assert stored_end(settings, group) == len(events)
    assert conversations(settings) == expected(events)


def test_batch_config_rejects_a_non_positive_byte_cap() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BatchConfig(max_bytes=0)


def test_rows_postgres_refuses_are_dead_lettered_alone(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # Valid envelopes that Postgres refuses (a CHECK added here, which validation cannot
    # know about): one inside a batch (halved until it is alone), then one alone after
    # everything else committed. Until 2026-11-29 the second one, failing on the writer
    # thread with nothing else gathered, was resubmitted to the writer forever.
    rng = random.Random(21)
    settings = make_schema(base=make_topics(partitions=2))
    events = random_events(rng, pages=3, users=10, n=120)
    # Ids with one copy each: every record Postgres refuses is one dead letter.
    copies = Counter(e.event_id for e in events)
    messages = [e for e in events if e.kind == "message" and copies[e.event_id] == 1]
    bad_inside, bad_alone = messages[len(messages) // 2], messages[-1]
    refused = {bad_inside.event_id, bad_alone.event_id}
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {}.events ADD CONSTRAINT refuse_two CHECK (event_id <> ALL({}))"
            ).format(sql.Identifier(settings.db_schema), sql.Literal(sorted(refused)))
        )
    first = [e for e in events if e.event_id != bad_alone.event_id]
    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat):
        total = produce(settings, first)
        wait_for(lambda: stored_end(settings, group) == total, timeout=60, what="first offsets")
        total += produce(settings, [bad_alone])
        wait_for(lambda: stored_end(settings, group) == total, timeout=30, what="last offset")
    good = [e for e in events if e.event_id not in refused]
    assert conversations(settings) == expected(good)
    assert scalar(settings, "SELECT count(*) FROM {s}.events") == len({e.event_id for e in good})
    assert mat.totals.dead_letters == 2
    letters = read_dlq(settings, 3)
    assert sorted(
        orjson.loads(base64.b64decode(str(d["value_b64"])))["event_id"] for d in letters
    ) == sorted(refused)
    assert all("refuse_two" in str(d["reason"]) for d in letters)
    # The batch keeps decoded rows, not the records: the letters carry the original
    # bytes, read back from Kafka by offset.
    assert sorted(
        (base64.b64decode(str(d["key_b64"])), base64.b64decode(str(d["value_b64"])))
        for d in letters
    ) == sorted((e.page_id.encode(), e.to_bytes()) for e in (bad_inside, bad_alone))


def test_a_refused_row_is_dead_lettered_once_when_its_batch_is_retried(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # The row Postgres refuses is dead-lettered alone (bisection), then a retryable error
    # ends the attempt and the whole batch is retried: the retry finds the same row
    # refused. Until 2026-12-02 it was dead-lettered (and counted) again every time.
    rng = random.Random(23)
    settings = make_schema(base=make_topics(partitions=1))
    events = [e for e in random_events(rng, pages=1, users=5, n=60) if e.kind != "message"]
    events += [e for e in random_events(rng, pages=1, users=5, n=40, mid_prefix="x")]
    once = Counter(e.event_id for e in events)
    bad = next(e for e in events if e.kind == "message" and once[e.event_id] == 1)
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {}.events ADD CONSTRAINT refuse_one CHECK (event_id <> {})"
            ).format(sql.Identifier(settings.db_schema), sql.Literal(bad.event_id))
        )
    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(
        settings, group=group, batch=BatchConfig(max_records=1000, max_wait=1.0)
    )
    sent: list[int] = []
    failed: list[bool] = []
    real_send, real_write = mat.dlq.send, mat.store.write_batch

    def send(letters: list[Poison]) -> None:
        real_send(letters)
        if letters:
            sent.append(len(letters))

    def write_batch(**kwargs: Any) -> BatchResult:
        if sent and not failed and kwargs["rows"]:
            failed.append(True)  # fail the first write after the dead letter, once
            raise RetryableError("injected: Postgres went away")
        return real_write(**kwargs)

    mat.dlq.send = send  # type: ignore[method-assign]
    mat.store.write_batch = write_batch  # type: ignore[method-assign]
    total = produce(settings, events)
    with running(mat):
        wait_for(lambda: stored_end(settings, group) == total, timeout=60, what="offsets")
    assert failed and sent == [1], sent
    good = [e for e in events if e.event_id != bad.event_id]
    assert conversations(settings) == expected(good)
    assert mat.totals.dead_letters == 1
    assert (
        REGISTRY.get_sample_value("convsync_materializer_dead_letters_total", {"group": group}) == 1
    )
    reader = make_consumer(settings, f"r-{uuid.uuid4().hex[:8]}")
    try:
        _, high = read_watermarks(reader, TopicPartition(settings.topic("dlq"), 0), timeout=10)
    finally:
        reader.close()
    assert high == 1, "the refused row was dead-lettered more than once"


def test_unconfirmed_dead_letters_are_retried_not_raised(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # The DLQ topic is missing (the broker creates none by itself): Kafka cannot confirm
    # the dead letter, so the batch must wait, retried with backoff, and go through once
    # the topic exists. Until 2026-11-29 a batch handed to the writer thread raised the
    # error out of run() instead.
    rng = random.Random(22)
    settings = make_schema(base=make_topics(partitions=2))
    admin = admin_client(settings)
    dlq = settings.topic("dlq")
    for future in admin.delete_topics([dlq], operation_timeout=30).values():
        future.result(timeout=30)
    events = random_events(rng, pages=2, users=5, n=60)
    poison = b"\xff not an envelope"
    total = produce(settings, events[:30]) + produce(settings, [poison])
    total += produce(settings, events[30:])
    group = f"g-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, batch=FAST)
    with running(mat):
        wait_for(lambda: mat.totals.retries > 0, timeout=60, what="an unconfirmed dead letter")
        assert stored_end(settings, group) < total, "no offset moves past unconfirmed poison"
        ensure_topics(admin, [s for s in topic_specs(settings) if s.name == dlq])
        wait_for(lambda: stored_end(settings, group) == total, timeout=120, what="all offsets")
    assert conversations(settings) == expected(events)
    letters = read_dlq(settings, 1)
    assert letters and {base64.b64decode(str(d["value_b64"])) for d in letters} == {poison}
