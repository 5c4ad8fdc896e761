"""Migration 0008's derived tables stay equal to what they are derived from, whatever the
writes (inserts, the materializer's upserts, updates, deletes, TRUNCATE, tag changes), and
are filled from the data already there when the migration runs on a live database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from convsync.db import connect
from schemas.migrate import apply_migrations
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
PAGES = ("p1", "p2", "p3")
USERS = tuple(f"u{i}" for i in range(12))
TAGS = ("vip", "spam", "needs_attention", "lead")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _q(conn: Conn, schema: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.execute(sql.SQL(text).format(s=sql.Identifier(schema)), params)
    return cur.fetchall() if cur.description else []


def counts(conn: Conn, schema: str) -> tuple[dict[str, int], dict[str, int]]:
    """(needs_reply_counts, the count of the rows themselves), zero counts left out."""
    kept = _q(conn, schema, "SELECT page_id, conversations FROM {s}.needs_reply_counts")
    real = _q(
        conn,
        schema,
        "SELECT page_id, count(*) FROM {s}.conversations WHERE needs_reply GROUP BY page_id",
    )
    return {p: int(n) for p, n in kept if n}, {p: int(n) for p, n in real}


def tag_rows(conn: Conn, schema: str) -> tuple[set[Any], set[Any]]:
    """(conversation_tag_index, what it should hold)."""
    kept = _q(
        conn, schema, "SELECT page_id, tag, psid, last_message_at FROM {s}.conversation_tag_index"
    )
    real = _q(
        conn,
        schema,
        "SELECT t.page_id, x.tag, t.psid, c.last_message_at FROM {s}.conversation_tags AS t"
        " CROSS JOIN LATERAL unnest(t.tags) AS x(tag)"
        " LEFT JOIN {s}.conversations AS c USING (page_id, psid)",
    )
    return set(kept), set(real)


def _rows(rng: random.Random, n: int) -> list[tuple[str, str, bool, datetime | None]]:
    out = {}
    for _ in range(n):
        at = None if rng.random() < 0.1 else T0 + timedelta(minutes=rng.randrange(10_000))
        out[(rng.choice(PAGES), rng.choice(USERS))] = rng.random() < 0.5, at
    return [(p, u, nr, at) for (p, u), (nr, at) in out.items()]


def random_write(conn: Conn, schema: str, rng: random.Random) -> None:
    """One statement of a random kind touching a few random conversations or tags."""
    op = rng.choice(("insert", "upsert", "update", "delete", "tags", "untag", "retag"))
    rows = _rows(rng, rng.randrange(1, 6))
    if op in ("insert", "upsert"):
        # The materializer's shape: INSERT ... ON CONFLICT DO UPDATE of a batch.
        conflict = (
            "DO UPDATE SET needs_reply = EXCLUDED.needs_reply,"
            " last_message_at = EXCLUDED.last_message_at"
            if op == "upsert"
            else "DO NOTHING"
        )
        _q(
            conn,
            schema,
            "INSERT INTO {s}.conversations (page_id, psid, needs_reply, last_message_at)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::boolean[], %s::timestamptz[])"
            " ON CONFLICT (page_id, psid) " + conflict,
            [list(col) for col in zip(*rows, strict=True)],
        )
    elif op == "update":
        _q(
            conn,
            schema,
            "UPDATE {s}.conversations AS c SET needs_reply = v.nr, last_message_at = v.at"
            " FROM unnest(%s::text[], %s::text[], %s::boolean[], %s::timestamptz[])"
            " AS v(p, u, nr, at) WHERE c.page_id = v.p AND c.psid = v.u",
            [list(col) for col in zip(*rows, strict=True)],
        )
    elif op == "delete":
        page, user = rng.choice(PAGES), rng.choice(USERS)
        _q(
            conn,
            schema,
            "DELETE FROM {s}.conversations WHERE page_id = %s AND psid >= %s",
            (page, user),
        )
    elif op == "tags":
        page, user = rng.choice(PAGES), rng.choice(USERS)
        tags = sorted(set(rng.choices(TAGS, k=rng.randrange(0, 3))))
        _q(
            conn,
            schema,
            "INSERT INTO {s}.conversation_tags (page_id, psid, tags) VALUES (%s, %s, %s)"
            " ON CONFLICT (page_id, psid) DO UPDATE SET tags = EXCLUDED.tags",
            (page, user, tags),
        )
    elif op == "untag":
        _q(
            conn,
            schema,
            "DELETE FROM {s}.conversation_tags WHERE page_id = %s",
            (rng.choice(PAGES),),
        )
    else:
        # Many rows at once, as the auto-clear trigger changes them.
        _q(
            conn,
            schema,
            "UPDATE {s}.conversation_tags SET tags = array_remove(tags, %s) WHERE %s = ANY(tags)",
            (rng.choice(TAGS), rng.choice(TAGS)),
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_derived_tables_follow_every_kind_of_write(make_schema: MakeSchema, seed: int) -> None:
    settings = make_schema()
    schema = settings.db_schema
    rng = random.Random(seed)
    with connect(settings) as conn:
        for step in range(150):
            with conn.transaction():
                random_write(conn, schema, rng)
            kept, real = counts(conn, schema)
            assert kept == real, step
            kept_tags, real_tags = tag_rows(conn, schema)
            assert kept_tags == real_tags, step
        _q(conn, schema, "TRUNCATE {s}.conversations")
        assert counts(conn, schema) == ({}, {})


def test_the_migration_fills_them_from_the_data_already_there(make_schema: MakeSchema) -> None:
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    rng = random.Random(9)
    with connect(settings) as conn:
        apply_migrations(conn, schema=schema, up_to=7)
        for _ in range(60):
            random_write(conn, schema, rng)
        _q(
            conn,
            schema,
            "INSERT INTO {s}.conversation_tags (page_id, psid, tags)"
            " SELECT page_id, psid, ARRAY['vip'] FROM {s}.conversations ON CONFLICT DO NOTHING",
        )
        assert _q(conn, schema, "SELECT count(*) FROM {s}.conversations")[0][0] > 0
        assert apply_migrations(conn, schema=schema, up_to=8) == ["0008_read_path.sql"]
        kept, real = counts(conn, schema)
        assert kept == real and real
        kept_tags, real_tags = tag_rows(conn, schema)
        assert kept_tags == real_tags and real_tags
        for _ in range(40):
            random_write(conn, schema, rng)
            assert counts(conn, schema)[0] == counts(conn, schema)[1]
            kept_tags, real_tags = tag_rows(conn, schema)
            assert kept_tags == real_tags


# The sync_statistics view as migration 0004 defined it: the reference the kept
# statistics must equal, whatever the writes.
STATISTICS_0004 = """
SELECT
    h.page_id,
    count(*) AS crawls,
    count(*) FILTER (WHERE h.status = 'done') AS succeeded,
    count(*) FILTER (WHERE h.status = 'failed') AS failed,
    count(*) FILTER (WHERE h.status = 'joined') AS joined,
    count(*) FILTER (WHERE h.status IN ('queued', 'running')) AS active,
    COALESCE(sum(h.conversations_done), 0)::bigint AS conversations_done,
    COALESCE(sum(h.messages_fetched), 0)::bigint AS messages_fetched,
    COALESCE(sum(h.api_calls), 0)::bigint AS api_calls,
    COALESCE(sum(h.throttle_waits), 0)::bigint AS throttle_waits,
    avg(EXTRACT(EPOCH FROM (h.finished_at - h.started_at)))
        FILTER (WHERE h.status = 'done')::double precision AS avg_duration_seconds,
    max(EXTRACT(EPOCH FROM (h.finished_at - h.started_at)))
        FILTER (WHERE h.status = 'done')::double precision AS max_duration_seconds,
    max(h.finished_at) FILTER (WHERE h.status = 'done') AS last_success_at,
    max(h.finished_at) FILTER (WHERE h.status = 'failed') AS last_failure_at,
    (SELECT f.last_error FROM {s}.crawl_history AS f
     WHERE f.page_id = h.page_id AND f.status = 'failed'
     ORDER BY f.finished_at DESC NULLS LAST, f.crawl_id LIMIT 1) AS last_error
FROM {s}.crawl_history AS h
GROUP BY h.page_id ORDER BY h.page_id
"""
STATUSES = ("queued", "running", "done", "failed", "joined")


def random_crawl_write(conn: Conn, schema: str, rng: random.Random, n: int) -> None:
    """One write of the kinds the crawler and the admin API make to crawl_history."""
    op = rng.choice(("insert", "progress", "progress", "progress", "finish", "delete"))
    crawl = f"c{rng.randrange(n)}"
    page = rng.choice(PAGES)
    at = T0 + timedelta(seconds=rng.randrange(100_000))
    if op == "insert":
        _q(
            conn,
            schema,
            "INSERT INTO {s}.crawl_history (crawl_id, page_id, full_crawl, status, requested_at,"
            " started_at) VALUES (%s, %s, false, %s, %s, %s) ON CONFLICT DO NOTHING",
            (crawl, page, rng.choice(("queued", "running")), at, at),
        )
    elif op == "progress":
        _q(
            conn,
            schema,
            "UPDATE {s}.crawl_history SET conversations_done = conversations_done + %s,"
            " messages_fetched = messages_fetched + %s, api_calls = api_calls + 1,"
            " throttle_waits = throttle_waits + %s WHERE crawl_id = %s",
            (rng.randrange(5), rng.randrange(50), rng.randrange(2), crawl),
        )
    elif op == "finish":
        status = rng.choice(STATUSES)
        finished = None if rng.random() < 0.1 else at + timedelta(seconds=rng.randrange(3600))
        error = f"error {rng.randrange(3)}" if status == "failed" else None
        _q(
            conn,
            schema,
            "UPDATE {s}.crawl_history SET status = %s, finished_at = %s, last_error = %s"
            " WHERE crawl_id = %s",
            (status, finished, error, crawl),
        )
    else:
        _q(conn, schema, "DELETE FROM {s}.crawl_history WHERE crawl_id = %s", (crawl,))


def statistics(conn: Conn, schema: str) -> tuple[list[Any], list[Any]]:
    kept = _q(conn, schema, "SELECT * FROM {s}.sync_statistics ORDER BY page_id")
    return kept, _q(conn, schema, STATISTICS_0004)


@pytest.mark.parametrize("seed", [1, 2])
def test_sync_statistics_equal_the_aggregate_of_every_crawl(
    make_schema: MakeSchema, seed: int
) -> None:
    settings = make_schema()
    schema = settings.db_schema
    rng = random.Random(seed)
    with connect(settings) as conn:
        for step in range(300):
            random_crawl_write(conn, schema, rng, 25)
            kept, real = statistics(conn, schema)
            # last_error: the view picked any of a page's failures with the latest
            # finished_at; ties are broken here by crawl id, in both.
            assert kept == real, step
        _q(conn, schema, "TRUNCATE {s}.crawl_history")
        assert statistics(conn, schema) == ([], [])


def test_the_migration_fills_the_statistics_from_the_crawls_there(make_schema: MakeSchema) -> None:
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    rng = random.Random(4)
    with connect(settings) as conn:
        apply_migrations(conn, schema=schema, up_to=7)
        for _ in range(200):
            random_crawl_write(conn, schema, rng, 40)
        before = _q(conn, schema, "SELECT * FROM {s}.sync_statistics ORDER BY page_id")
        apply_migrations(conn, schema=schema)
        kept, real = statistics(conn, schema)
        assert kept == real == before and real
