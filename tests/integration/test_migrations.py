"""Migrations on the real Postgres: apply to an empty schema, re-apply as a no-op."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from convsync.db import connect
from schemas.migrate import MigrationError, apply_migrations, load_migrations, split_statements
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

CONTRACT = {
    "events": {
        "event_id",
        "page_id",
        "psid",
        "kind",
        "mid",
        "occurred_at",
        "direction",
        "text",
        "source",
        "payload",
        "topic",
        "partition",
        "offset",
    },
    "conversations": {
        "page_id",
        "psid",
        "thread_id",
        "first_message_at",
        "last_message_at",
        "message_count",
        "last_message_text",
        "last_inbound_at",
        "last_outbound_at",
        "needs_reply",
        "read_watermark",
        "delivered_watermark",
        "version",
    },
    "consumer_offsets": {"group", "topic", "partition", "next_offset"},
    "crawl_state": {"page_id", "status", "last_error", "started_at", "finished_at"},
}


def _columns(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> dict[str, set[str]]:
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
        (schema,),
    ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(str(table), set()).add(str(column))
    return out


def test_apply_to_empty_then_noop(
    make_schema: MakeSchema, pg_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    applied = apply_migrations(pg_conn, schema=schema)
    assert applied == [m.name for m in load_migrations()]
    cols = _columns(pg_conn, schema)
    for table, wanted in CONTRACT.items():
        assert wanted <= cols.get(table, set()), (table, wanted - cols.get(table, set()))
    before = pg_conn.execute(
        sql.SQL("SELECT version, applied_at FROM {}.schema_migrations ORDER BY version").format(
            sql.Identifier(schema)
        )
    ).fetchall()
    assert apply_migrations(pg_conn, schema=schema) == []
    after = pg_conn.execute(
        sql.SQL("SELECT version, applied_at FROM {}.schema_migrations ORDER BY version").format(
            sql.Identifier(schema)
        )
    ).fetchall()
    assert before == after


def test_changed_migration_is_refused(
    make_schema: MakeSchema, pg_conn: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    settings = make_schema(migrate=False)
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
    assert apply_migrations(pg_conn, schema=settings.db_schema, directory=tmp_path) == [
        "0001_a.sql"
    ]
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x bigint);")
    with pytest.raises(MigrationError, match="changed"):
        apply_migrations(pg_conn, schema=settings.db_schema, directory=tmp_path)


def test_failed_migration_leaves_nothing_half_done(
    make_schema: MakeSchema, pg_conn: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    settings = make_schema(migrate=False)
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE b (x int); SELECT no_such_function();")
    with pytest.raises(psycopg.Error):
        apply_migrations(pg_conn, schema=settings.db_schema, directory=tmp_path)
    tables = _columns(pg_conn, settings.db_schema)
    assert "a" in tables
    assert "b" not in tables


def test_misnamed_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name"):
        load_migrations(tmp_path)


def _is_valid(conn: psycopg.Connection[tuple[object, ...]], schema: str, index: str) -> bool | None:
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, index),
    ).fetchone()
    return None if row is None else bool(row[0])


def test_split_statements_keeps_quoted_semicolons() -> None:
    text = (
        "-- a; comment\nCREATE TABLE x (a text DEFAULT ';'); /* ; */\n"
        'DO $$ BEGIN PERFORM 1; END $$;\nSELECT $t$ ; $t$, "we;ird";\n'
    )
    assert split_statements(text) == [
        "CREATE TABLE x (a text DEFAULT ';')",
        "DO $$ BEGIN PERFORM 1; END $$",
        'SELECT $t$ ; $t$, "we;ird"',
    ]


def test_a_no_transaction_migration_must_build_indexes_concurrently(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text(
        "-- convsync: no-transaction\nCREATE INDEX a_x ON a (x);\n"
    )
    with pytest.raises(MigrationError, match="CONCURRENTLY IF NOT EXISTS"):
        load_migrations(tmp_path)
    (tmp_path / "0001_a.sql").write_text(
        "-- convsync: no-transaction\nCREATE INDEX CONCURRENTLY a_x ON a (x);\n"
    )
    with pytest.raises(MigrationError, match="CONCURRENTLY IF NOT EXISTS"):
        load_migrations(tmp_path)


def test_new_indexes_on_events_and_conversations_are_built_concurrently() -> None:
    # 0001-0004 predate the rule (and an applied file cannot change).
    pattern = re.compile(r"CREATE\s+(UNIQUE\s+)?INDEX\b[^;]*?\bON\s+(events|conversations)\b", re.I)
    for mig in load_migrations():
        if mig.version <= 4:
            continue
        for stmt in mig.statements():
            if pattern.search(stmt):
                assert not mig.transactional, (mig.name, stmt)
                assert "CONCURRENTLY" in stmt.upper(), (mig.name, stmt)


def test_a_failed_concurrent_build_is_dropped_and_built_again(
    make_schema: MakeSchema, pg_conn: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    (tmp_path / "0001_t.sql").write_text(
        "CREATE TABLE t (x int NOT NULL); INSERT INTO t VALUES (1), (1), (2);"
    )
    (tmp_path / "0002_t_x.sql").write_text(
        "-- convsync: no-transaction\n-- A unique index on t.\n"
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS y int;\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
    )
    # The duplicate makes the build fail midway: the ALTER is applied, the index is left
    # INVALID, and the migration is not recorded.
    with pytest.raises(psycopg.errors.UniqueViolation):
        apply_migrations(pg_conn, schema=schema, directory=tmp_path)
    assert _is_valid(pg_conn, schema, "t_x") is False
    versions = pg_conn.execute(
        sql.SQL("SELECT array_agg(version) FROM {}.schema_migrations").format(
            sql.Identifier(schema)
        )
    ).fetchone()
    assert versions is not None and versions[0] == [1]
    pg_conn.execute(
        sql.SQL("DELETE FROM {}.t WHERE ctid = (SELECT max(ctid) FROM {}.t WHERE x = 1)").format(
            sql.Identifier(schema), sql.Identifier(schema)
        )
    )
    # The retry runs every statement again: the ALTER is a no-op, the invalid index is
    # dropped and built again (IF NOT EXISTS alone would keep the invalid one).
    assert apply_migrations(pg_conn, schema=schema, directory=tmp_path) == ["0002_t_x.sql"]
    assert _is_valid(pg_conn, schema, "t_x") is True
    assert pg_conn.execute("SHOW search_path").fetchone() == ('"$user", public',)


def test_an_index_build_waits_for_an_open_writer_and_blocks_no_other(
    make_schema: MakeSchema, tmp_path: Path
) -> None:
    # A writer's transaction is open on the table: the concurrent build waits for it,
    # and meanwhile other writers go on. (A plain CREATE INDEX would queue its SHARE
    # lock behind the open transaction and every insert behind that; inside a
    # transaction block CONCURRENTLY is refused.)
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (x int NOT NULL);")
    (tmp_path / "0002_t_x.sql").write_text(
        "-- convsync: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
    )
    insert = sql.SQL("INSERT INTO {}.t VALUES (%s)").format(sql.Identifier(schema))
    with connect(settings) as setup:
        apply_migrations(setup, schema=schema, directory=tmp_path, up_to=1)
    holder = connect(settings, autocommit=False)
    holder.execute(insert, (1,))
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with connect(settings) as conn:
                apply_migrations(conn, schema=schema, directory=tmp_path)
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    thread = threading.Thread(target=migrate)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        with connect(settings) as probe:
            while True:
                row = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s"
                    " AND wait_event_type = 'Lock'",
                    ("CREATE INDEX CONCURRENTLY%",),
                ).fetchone()
                if row is not None and row[0]:
                    break
                assert time.monotonic() < deadline, "the index build never waited"
                time.sleep(0.1)
            probe.execute("SET statement_timeout = '3s'")
            for x in range(2, 12):
                probe.execute(insert, (x,))
            assert thread.is_alive()
    finally:
        holder.commit()
        holder.close()
        thread.join(60)
    assert not errors, errors
    with connect(settings) as conn:
        assert _is_valid(conn, schema, "t_x") is True


def test_the_events_key_moves_to_event_id_and_psid(make_schema: MakeSchema, tmp_path: Path) -> None:
    settings = make_schema(migrate=False)
    schema = settings.db_schema
    insert = sql.SQL(
        "INSERT INTO {}.events (event_id, page_id, psid, kind, occurred_at, source, payload,"
        " topic, \"partition\", \"offset\") VALUES (%s, 'p', %s, 'message', now(), 'webhook',"
        " '{{}}', 't', 0, 0)"
    ).format(sql.Identifier(schema))
    with connect(settings) as conn:
        apply_migrations(conn, schema=schema, up_to=4)
        conn.execute(insert, ("ev1_a", "u1"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("ev1_a", "u2"))
        assert apply_migrations(conn, schema=schema) == [
            m.name for m in load_migrations() if m.version > 4
        ]
        key = conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.i) FROM pg_constraint AS c"
            " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, i)"
            " JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
            " WHERE c.conrelid = %s::regclass AND c.contype = 'p'",
            (f"{schema}.events",),
        ).fetchone()
        assert key is not None and key[0] == ["event_id", "psid"]
        # One event id, two conversations: two rows now; the same pair twice, refused.
        conn.execute(insert, ("ev1_a", "u2"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("ev1_a", "u2"))
