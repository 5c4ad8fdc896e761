"""The materializer's binary COPYs: the bytes each column gets are what its type reads.

Binary COPY carries no types: a value written with the wrong dumper is either refused
("incorrect binary data format") or, worse, read as another value (a time shifted by an
epoch). These tests hold the dumpers named in ``statements`` to a migrated schema's
columns and the stored rows to what the same rows give as query parameters.
"""

from __future__ import annotations

import random
from typing import Final

import msgspec
from psycopg import sql

from consumers.materializer import statements as st
from consumers.materializer.folding import event_row
from consumers.materializer.rows import MAX_MS, Position, stage_row
from consumers.materializer.store import Store
from convsync.db import connect
from schemas.envelope import Envelope
from tests.consumers.helpers import random_events
from tests.fixtures.postgres import MakeSchema

# A column's type -> the dumper whose bytes its receive function reads from the values
# folding.copy_row and the touched rows hold.
WIRE: Final = {
    "text": "text",
    "timestamptz": "int8",  # microseconds since 2000-01-01 (folding.pg_time)
    "jsonb": "text",  # a version byte 1, then the JSON text
    "int4": "int4",
    "int8": "int8",
    "numeric": "numeric",
    "bool": "bool",
}

COLUMN_TYPES: Final = sql.SQL(
    """
    SELECT a.attname, t.typname FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
    """
)


def _types(conn: object, table: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    rows = dict(conn.execute(COLUMN_TYPES, (table,)).fetchall())  # type: ignore[attr-defined]
    return tuple(WIRE[rows[c]] for c in columns)


def test_the_copy_types_are_the_wire_formats_of_the_columns(make_schema: MakeSchema) -> None:
    settings = make_schema()
    with connect(settings) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db_schema)))
        conn.execute(st.CREATE_SCRATCH)
        assert _types(conn, "events", st.EVENT_COLUMNS) == st.EVENT_COPY_TYPES
        assert _types(conn, "touched", st.TOUCHED_COLUMNS) == st.TOUCHED_COPY_TYPES


def _edges() -> list[Envelope]:
    """Copies whose values a wrong format would change: times at the ends of the range and
    off whole seconds, text COPY's escapes, non-ASCII text, JSON with escapes."""
    out = random_events(random.Random(7), pages=2, users=3, n=40)
    edge = msgspec.structs.replace
    odd = 'tab\there\nnewline \\ backslash \\N é 漢字 🙂 "quoted"'
    out.append(edge(out[0], event_id="ev1_" + "e" * 40, occurred_at=MAX_MS, text=odd))
    out.append(edge(out[1], event_id="ev1_" + "f" * 40, occurred_at=0, watermark=1))
    out.append(
        edge(
            out[2],
            event_id="ev1_" + "a" * 40,
            occurred_at=946_684_799_999,  # 1 ms before Postgres's epoch
            attrs={"num_edit": 2**62, "nested": {"s": odd, "l": [1, 2.5, None, True]}},
            raw={"k": "\\u0041 \t", "deep": [{"x": odd}]},
        )
    )
    return out


def test_binary_copy_stores_what_the_parameters_store(make_schema: MakeSchema) -> None:
    settings = make_schema()
    events = _edges()
    rows = [stage_row(ev, Position("t.events", 0, i), i) for i, ev in enumerate(events)]
    # Only the first copy of each (event id, psid): the fold would merge the others.
    firsts = list({(r[1], r[3]): r for r in reversed(rows)}.values())
    store = Store(settings.database_url, settings.db_schema)
    try:
        store.write_batch(group="g", topic="t.events", rows=firsts, next_offsets={0: len(rows)})
    finally:
        store.close()
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in st.EVENT_COLUMNS)
    schema = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.ref (LIKE {}.events INCLUDING DEFAULTS)").format(
                schema, schema
            )
        )
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {}.ref ({}) VALUES ({})").format(
                    schema, cols, sql.SQL(", ").join(sql.Placeholder() * len(st.EVENT_COLUMNS))
                ),
                [event_row(r) for r in firsts],
            )
        query = sql.SQL("SELECT {} FROM {}.{} ORDER BY event_id, psid")
        copied = conn.execute(query.format(cols, schema, sql.Identifier("events"))).fetchall()
        wanted = conn.execute(query.format(cols, schema, sql.Identifier("ref"))).fetchall()
    assert len(copied) == len(firsts)
    assert copied == wanted
