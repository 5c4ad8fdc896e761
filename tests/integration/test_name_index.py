"""Migration 0018's conversation_name_index stays equal to what it is derived from (the
contacts' lowercased names, with their conversations' last_message_at), whatever the
writes to contacts (the crawler's upserts, name changes, other columns, deletes, TRUNCATE)
and to conversations (the materializer's batches, updates, deletes, TRUNCATE); and the
migration fills it from the data already there."""

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
PAGES = ("p1", "p2")
USERS = tuple(f"u{i}" for i in range(10))
# Names that collide once lowercased, repeat across fields, are empty or not ASCII.
NAMES = (None, "", "Ann Lee", "ANN LEE", "Lee", "lee", "Ärger Öl", "ann.ig", "Zoë", "Bo")
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# sort_at as text: -infinity has no Python datetime
KEPT = "SELECT page_id, psid, key3, names, sort_at::text FROM {s}.conversation_name_index"
# What the index should hold, from the tables themselves: each contact's names lowercased
# (lower() in the database's collation, as the migration's function does it), each once,
# grouped by their first three characters, sorted in "C".
REAL = """
SELECT page_id, psid, left(v, 3), array_agg(v ORDER BY v), at FROM (
    SELECT DISTINCT k.page_id, k.psid, lower(n.v) COLLATE "C" AS v,
           COALESCE(c.last_message_at, '-infinity')::text AS at
    FROM {s}.contacts AS k
    CROSS JOIN LATERAL unnest(ARRAY[k.name, k.last_name, k.username]) AS n(v)
    LEFT JOIN {s}.conversations AS c USING (page_id, psid)
    WHERE n.v <> ''
) AS named
GROUP BY page_id, psid, left(v, 3), at
"""


def _q(conn: Conn, schema: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.execute(sql.SQL(text).format(s=sql.Identifier(schema)), params)
    return cur.fetchall() if cur.description else []


def _rows(conn: Conn, schema: str, text: str) -> list[tuple[Any, ...]]:
    return [(*r[:3], tuple(r[3]), r[4]) for r in _q(conn, schema, text)]


def name_rows(conn: Conn, schema: str) -> tuple[list[Any], set[Any]]:
    """(the index's rows as a list, so a duplicate shows; what it should hold)."""
    return _rows(conn, schema, KEPT), set(_rows(conn, schema, REAL))


def _conversation_write(conn: Conn, schema: str, rng: random.Random) -> None:
    op = rng.choice(("upsert", "upsert", "update", "delete"))
    if op == "delete":
        _q(
            conn,
            schema,
            "DELETE FROM {s}.conversations WHERE page_id = %s AND psid >= %s",
            (rng.choice(PAGES), rng.choice(USERS)),
        )
        return
    rows = {
        (rng.choice(PAGES), rng.choice(USERS)): None
        if rng.random() < 0.1
        else T0 + timedelta(minutes=rng.randrange(10_000))
        for _ in range(rng.randrange(1, 6))
    }
    cols = [[p for p, _ in rows], [u for _, u in rows], list(rows.values())]
    if op == "upsert":
        # The materializer's shape: INSERT ... ON CONFLICT DO UPDATE of a batch.
        _q(
            conn,
            schema,
            "INSERT INTO {s}.conversations (page_id, psid, last_message_at)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])"
            " ON CONFLICT (page_id, psid) DO UPDATE SET last_message_at = EXCLUDED.last_message_at",
            cols,
        )
    else:
        _q(
            conn,
            schema,
            "UPDATE {s}.conversations AS c SET last_message_at = v.at"
            " FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS v(p, u, at)"
            " WHERE c.page_id = v.p AND c.psid = v.u",
            cols,
        )


def _contact_write(conn: Conn, schema: str, rng: random.Random) -> None:
    op = rng.choice(("participants", "profile", "refused", "delete"))
    page, user = rng.choice(PAGES), rng.choice(USERS)
    if op == "participants":
        # The crawler's batch of a listing's participants (name, username kept if absent).
        users = rng.sample(USERS, rng.randrange(1, 4))
        _q(
            conn,
            schema,
            "INSERT INTO {s}.contacts AS k (page_id, psid, name, username, source)"
            " SELECT %s, u, %s, %s, 'participants' FROM unnest(%s::text[]) AS u"
            " ON CONFLICT (page_id, psid) DO UPDATE SET"
            " name = COALESCE(EXCLUDED.name, k.name),"
            " username = COALESCE(EXCLUDED.username, k.username)",
            (page, rng.choice(NAMES), rng.choice(NAMES), users),
        )
    elif op == "profile":
        _q(
            conn,
            schema,
            "INSERT INTO {s}.contacts AS k (page_id, psid, name, first_name, last_name,"
            " source) VALUES (%s, %s, %s, %s, %s, 'profile_api')"
            " ON CONFLICT (page_id, psid) DO UPDATE SET name = EXCLUDED.name,"
            " first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name",
            (page, user, rng.choice(NAMES), rng.choice(NAMES), rng.choice(NAMES)),
        )
    elif op == "refused":
        # Columns other than the names: the index is not touched.
        _q(
            conn,
            schema,
            "UPDATE {s}.contacts SET error = 'refused', attempts = attempts + 1 WHERE page_id = %s",
            (page,),
        )
    else:
        _q(
            conn,
            schema,
            "DELETE FROM {s}.contacts WHERE page_id = %s AND psid >= %s",
            (page, user),
        )


def random_write(conn: Conn, schema: str, rng: random.Random) -> None:
    """One statement touching a few random conversations or contacts."""
    if rng.random() < 0.5:
        _conversation_write(conn, schema, rng)
    else:
        _contact_write(conn, schema, rng)


def _assert_equal(conn: Conn, schema: str, step: object) -> None:
    kept, real = name_rows(conn, schema)
    assert len(kept) == len(set(kept)), step
    assert set(kept) == real, step


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_name_index_follows_every_kind_of_write(make_schema: MakeSchema, seed: int) -> None:
    settings = make_schema()
    schema = settings.db_schema
    rng = random.Random(seed)
    with connect(settings) as conn:
        for step in range(200):
            with conn.transaction():
                random_write(conn, schema, rng)
            _assert_equal(conn, schema, step)
        assert name_rows(conn, schema)[1], "the writes left no contact with a name"
        _q(conn, schema, "TRUNCATE {s}.conversations")
        _assert_equal(conn, schema, "truncate conversations")
        _q(conn, schema, "TRUNCATE {s}.contacts")
        assert name_rows(conn, schema) == ([], set())


def test_the_migration_fills_the_name_index_from_the_data_there(make_schema: MakeSchema) -> None:
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    rng = random.Random(5)
    with connect(settings) as conn:
        apply_migrations(conn, schema=schema, up_to=17)
        for _ in range(120):
            random_write(conn, schema, rng)
        assert apply_migrations(conn, schema=schema, up_to=18) == ["0018_contact_name_index.sql"]
        kept, real = name_rows(conn, schema)
        assert set(kept) == real and real
        dropped = _q(
            conn,
            schema,
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'contacts'"
            " AND indexname LIKE '%%prefix%%'",
            (schema,),
        )
        assert dropped == []
        for step in range(60):
            random_write(conn, schema, rng)
            _assert_equal(conn, schema, step)
