"""Migrations on the real Postgres: apply to an empty schema, re-apply as a no-op."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from schemas.migrate import MigrationError, apply_migrations, load_migrations
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
