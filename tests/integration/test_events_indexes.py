"""The indexes of ``events`` after every migration, and that the lookups by mid still
have one (migration 0019 dropped the two that no statement read)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from convsync.db import connect
from tests.fixtures.postgres import MakeSchema

KEPT = {
    "events_event_psid_pkey",
    "events_conversation_idx",
    "events_target_idx",
    "events_messages_idx",
    "events_page_inserted_idx",
}


def _indexes(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'events'",
        (schema,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def _scans(plan: Any) -> list[tuple[str, str | None]]:
    """(node type, index name) of every scan of ``events`` in a JSON plan."""
    out: list[tuple[str, str | None]] = []
    if isinstance(plan, dict):
        if plan.get("Relation Name") == "events":
            out.append((str(plan["Node Type"]), plan.get("Index Name")))
        for value in plan.values():
            out.extend(_scans(value))
    elif isinstance(plan, list):
        for value in plan:
            out.extend(_scans(value))
    return out


def test_events_keeps_only_the_indexes_a_statement_reads(make_schema: MakeSchema) -> None:
    settings = make_schema()
    with connect(settings) as conn:
        assert _indexes(conn, settings.db_schema) == KEPT


def test_a_message_s_changes_are_found_by_an_index_without_events_mid_idx(
    make_schema: MakeSchema,
) -> None:
    # With sequential scans priced out, a lookup that no index can serve still shows as a
    # Seq Scan: every scan of events in the messages view's plan must be an index's.
    settings = make_schema()
    s = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            sql.SQL(
                "EXPLAIN (FORMAT JSON) SELECT * FROM {}.messages"
                " WHERE page_id = 'p' AND psid = 'u' ORDER BY occurred_at DESC LIMIT 50"
            ).format(s)
        ).fetchone()
        assert plan is not None
        doc = plan[0] if not isinstance(plan[0], str) else json.loads(plan[0])
    scans = _scans(doc)
    assert len(scans) >= 4, scans  # the messages, their edits, reactions and unsends
    assert all(node != "Seq Scan" for node, _ in scans), scans
    assert {name for _, name in scans} <= KEPT, scans
