"""When a scenario has settled: the mapper mapped every delivery, the materializer
stored every event (the harness's ``wait_caught_up``)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import TopicPartition
from psycopg import sql

from admin.status import kafka_group_lag, watermarks
from convsync.db import connect
from convsync.kafka import make_consumer
from convsync.settings import Settings


def mapper_group(settings: Settings) -> str:
    """The consumer group of a scenario's mapper."""
    return f"{settings.topic_prefix}-mapper"


def mapper_lag(settings: Settings) -> int:
    """Deliveries not yet mapped: past the mapper's offsets, committed with its
    transactions."""
    return kafka_group_lag(settings, "deliveries", mapper_group(settings))


def unread_events(settings: Settings, group: str) -> int:
    """Records of the events topic past the materializer's stored offsets.

    Not the high watermark minus the offsets: the mapper's transactions leave a commit
    marker after their records, an offset no consumer ever reads, so a materializer that
    stored everything is one offset short of the watermark on those partitions. Records
    past the stored offsets are read back (read_committed, as the materializer reads).
    """
    topic = settings.topic("events")
    highs = watermarks(settings, [topic]).get(topic, {})
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL(
                'SELECT "partition", next_offset FROM {}.consumer_offsets'
                ' WHERE "group" = %s AND topic = %s'
            ).format(sql.Identifier(settings.db_schema)),
            (group, topic),
        ).fetchall()
    stored = {int(str(p)): int(str(o)) for p, o in rows}
    behind = {p: stored.get(p, 0) for p, (_lo, hi) in highs.items() if stored.get(p, 0) < hi}
    if not behind:
        return 0
    consumer = make_consumer(settings, f"caught-up-{uuid.uuid4().hex[:8]}")
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in behind.items()])
        unread = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                unread += 1
                continue
            positions = consumer.position([TopicPartition(topic, p) for p in behind])
            if all(tp.offset >= highs[tp.partition][1] for tp in positions):
                return unread
        return max(unread, 1)
    finally:
        consumer.close()
