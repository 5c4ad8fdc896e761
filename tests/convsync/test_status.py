"""`convsync status` against the real broker and database."""

from __future__ import annotations

import pytest
from psycopg import sql

from convsync.db import connect
from convsync.kafka import make_producer
from convsync.status import collect
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
    snap = collect(settings)
    assert snap.errors == []
    assert {(lag.partition, lag.lag) for lag in snap.lags} == {(0, 3), (1, 0)}
    assert snap.lag_by_group() == {"g": 3}
    assert snap.dlq_records == 3
    assert snap.as_json()["lag_by_group"] == {"g": 3}
