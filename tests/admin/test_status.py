"""`convsync status` against the real broker and database."""

from __future__ import annotations

import time

import pytest
from psycopg import sql

from admin.counts import TableCount, count_rows, insert_rate, inserted_rows
from admin.status import collect
from convsync.db import connect
from convsync.kafka import make_producer
from convsync.settings import Settings
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


def test_crawls_and_statistics_are_listed_for_a_bounded_number_of_pages(
    make_schema: MakeSchema,
) -> None:
    # 120 pages: the 3 failed, the 2 running (one stalled) and the 2 with a failure in
    # their statistics come first; every page is counted, whatever is listed.
    settings = make_schema()
    schema = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.crawl_state (page_id, status, updated_at)"
                " SELECT 'p' || i, CASE WHEN i IN (7, 70, 107) THEN 'failed'"
                " WHEN i IN (11, 111) THEN 'running' ELSE 'done' END,"
                " CASE WHEN i = 111 THEN now() - interval '1 hour' ELSE now() END"
                " FROM generate_series(1, 120) AS i"
            ).format(schema)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.sync_statistics_pages (page_id, crawls, succeeded, failed,"
                " joined, active, conversations_done, messages_fetched, api_calls,"
                " throttle_waits, done_timed, last_failure_at)"
                " SELECT 'p' || i, 2, 2 - (i % 50 = 0)::int, (i % 50 = 0)::int, 0, 0, 1,"
                " 10, 3, 0, 0, CASE WHEN i % 50 = 0 THEN now() - i * interval '1 s' END"
                " FROM generate_series(1, 120) AS i"
            ).format(schema)
        )
    snap = collect(settings, stall_after=600)
    assert snap.listed_pages == 50
    assert len(snap.crawls) == 50 and len(snap.sync_statistics) == 50
    assert snap.crawl_counts == {"done": 115, "failed": 3, "running": 2}
    assert {c["page_id"] for c in snap.crawls[:5]} == {"p7", "p70", "p107", "p11", "p111"}
    assert [s["page_id"] for s in snap.sync_statistics[:2]] == ["p50", "p100"]
    assert snap.sync_totals == {
        "pages": 120, "crawls": 240, "succeeded": 238, "failed": 2, "joined": 0,
        "messages_fetched": 1200,
    }  # fmt: skip
    assert [s.split(":")[0] for s in snap.stalled] == ["crawl of page p111"]
    # A stalled crawl is reported even when it is not listed.
    one = collect(settings, stall_after=600, listed_pages=1)
    assert len(one.crawls) == 1 and [s.split(":")[0] for s in one.stalled] == ["crawl of page p111"]
    everything = collect(settings, listed_pages=None)
    assert len(everything.crawls) == 120 and len(everything.sync_statistics) == 120


def _conversations(settings: Settings, n: int) -> None:
    # Its own connection, closed at once: a backend publishes its statistics on exit.
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.conversations (page_id, psid)"
                " SELECT 'p1', 'u' || i FROM generate_series(1, %s) AS i"
            ).format(sql.Identifier(settings.db_schema)),
            (n,),
        )


def test_row_counts_are_exact_when_small_and_estimated_when_large(
    make_schema: MakeSchema,
) -> None:
    settings = make_schema()
    schema = settings.db_schema
    _conversations(settings, 30)
    with connect(settings) as conn:
        assert count_rows(conn, schema, "conversations").rows == 30
        assert not count_rows(conn, schema, "conversations").estimated
        conn.execute(sql.SQL("ANALYZE {}.conversations").format(sql.Identifier(schema)))
        # Above the bound the figure is Postgres's estimate (here exact: just analyzed).
        large = count_rows(conn, schema, "conversations", exact_below=10)
        assert large.estimated and large.rows == 30
        assert count_rows(conn, schema, "no_such_table") == TableCount(0, False, 0)
    snap = collect(settings)
    assert snap.conversations_rows == 30 and snap.estimated == []
    assert snap.events_per_second is None


def test_the_insert_rate_is_measured_from_the_statistics(make_schema: MakeSchema) -> None:
    settings = make_schema()
    schema = settings.db_schema
    with connect(settings) as conn:
        first, since = inserted_rows(conn, schema, "conversations"), time.monotonic()
        _conversations(settings, 200)
        rate = insert_rate(conn, schema, "conversations", first, since, 0.2)
        assert 0 < rate <= 200 / 0.2
        assert inserted_rows(conn, schema, "conversations") - first == 200
    snap = collect(settings, rate_window=0.3)
    assert snap.events_per_second == 0.0 and snap.estimated == ["events_per_second"]


def test_a_transactions_commit_marker_is_no_lag(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # The mapper writes events in Kafka transactions: after its records, a commit marker
    # takes an offset no consumer reads. A group that stored the offset after its last
    # record has read everything (lag 0); one record short is still lag 1.
    settings = make_schema(base=make_topics(partitions=2))
    producer = make_producer(settings, **{"transactional.id": f"{settings.topic_prefix}-t"})
    producer.init_transactions(30)
    for _ in range(2):  # two transactions: records 0-2, marker 3, records 4-6, marker 7
        producer.begin_transaction()
        for _ in range(3):
            producer.produce(settings.topic("events"), value=b"x", partition=0)
            producer.produce(settings.topic("events"), value=b"x", partition=1)
        producer.commit_transaction(30)
    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                'INSERT INTO {}.consumer_offsets ("group", topic, "partition", next_offset,'
                " updated_at) VALUES ('g', %s, 0, 7, now() - interval '2 hours'),"
                " ('g', %s, 1, 6, now() - interval '2 hours')"
            ).format(sql.Identifier(settings.db_schema)),
            (settings.topic("events"), settings.topic("events")),
        )
    snap = collect(settings, stall_after=3600)
    assert snap.errors == []
    assert snap.high_watermarks[settings.topic("events")] == {0: 8, 1: 8}
    assert {(lag.partition, lag.lag) for lag in snap.lags} == {(0, 0), (1, 1)}
    # Partition 0 is caught up, so not stalled; partition 1 is behind and idle.
    [stalled] = snap.stalled
    assert stalled.startswith(f"group g partition {settings.topic('events')}[1]:")
