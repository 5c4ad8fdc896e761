"""`convsync status` against the real broker and database."""

from __future__ import annotations

import pytest
from psycopg import sql

from admin.status import collect
from convsync.db import connect
from convsync.kafka import make_producer
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration


def test_lag_and_dlq_counts(make_topics: MakeTopics, make_schema: MakeSchema) -> None:
    settings = make_schema(base=make_topics(partitions=2))
    producer = make_producer(settings)
    for i in range(10):
        producer.produce(settings.topic("events"), value=b"x", partition=i % 2)
    for _ in range(3):
        producer.produce(settings.topic("dlq"), value=b"bad", partition=0)
    assert producer.flush(30) == 0
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                'INSERT INTO {}.consumer_offsets ("group", topic, "partition", next_offset)'
                " VALUES ('g', %s, 0, 2), ('g', %s, 1, 5)"
            ).format(sql.Identifier(settings.db_schema)),
            (settings.topic("events"), settings.topic("events")),
        )
    snap = collect(settings, stall_after=3600)
    assert snap.errors == []
    assert snap.stalled == []
    assert {(lag.partition, lag.lag) for lag in snap.lags} == {(0, 3), (1, 0)}
    assert snap.lag_by_group() == {"g": 3}
    assert snap.dlq_records == 3
    assert snap.as_json()["lag_by_group"] == {"g": 3}


def test_stalled_consumer_and_crawl_are_reported(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=1))
    producer = make_producer(settings)
    for _ in range(4):
        producer.produce(settings.topic("events"), value=b"x", partition=0)
    assert producer.flush(30) == 0
    schema = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                'INSERT INTO {}.consumer_offsets ("group", topic, "partition", next_offset,'
                " updated_at) VALUES ('slow', %s, 0, 1, now() - interval '1 hour')"
            ).format(schema),
            (settings.topic("events"),),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.crawl_state (page_id, status, updated_at)"
                " VALUES ('p1', 'running', now() - interval '1 hour'),"
                " ('p2', 'running', now())"
            ).format(schema)
        )
    snap = collect(settings, stall_after=600)
    assert len(snap.stalled) == 2, snap.stalled
    assert any("group slow" in s and "lag 3" in s for s in snap.stalled)
    assert any("page p1" in s for s in snap.stalled)
    assert not any("page p2" in s for s in snap.stalled)
    assert collect(settings, stall_after=7200).stalled == []
