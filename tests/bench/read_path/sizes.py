"""Bytes on disk of the read-path data set: per table (heap, TOAST, each index), per event."""

from __future__ import annotations

from dataclasses import dataclass

from convsync.db import connect
from convsync.settings import Settings

TABLES = (
    "events",
    "conversations",
    "conversation_tags",
    "crawl_history",
    "crawl_state",
    "needs_reply_counts",
    "conversation_tag_index",
    "sync_statistics_pages",
    "contacts",
    "conversation_name_index",
)


@dataclass(frozen=True)
class Part:
    """One relation of a table: its heap, its TOAST (table and index) or one index."""

    table: str
    part: str
    bytes: int


def measure(settings: Settings, schema: str) -> tuple[list[Part], dict[str, int]]:
    """Return every part of the data set's tables and the row counts (exact)."""
    parts: list[Part] = []
    rows: dict[str, int] = {}
    with connect(settings) as conn:
        for table in TABLES:
            reg = f"{schema}.{table}"
            found = conn.execute("SELECT to_regclass(%s)", (reg,)).fetchone()
            if found is None or found[0] is None:
                continue
            heap, toast, total = conn.execute(
                "SELECT pg_relation_size(c.oid),"
                " COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),"
                " pg_total_relation_size(c.oid)"
                " FROM pg_class AS c WHERE c.oid = %s::regclass",
                (reg,),
            ).fetchone() or (0, 0, 0)
            parts.append(Part(table, "heap", int(heap)))
            parts.append(Part(table, "TOAST", int(toast)))
            index_total = 0
            for name, size in conn.execute(
                "SELECT i.relname, pg_relation_size(i.oid) FROM pg_index AS x"
                " JOIN pg_class AS i ON i.oid = x.indexrelid"
                " WHERE x.indrelid = %s::regclass ORDER BY pg_relation_size(i.oid) DESC",
                (reg,),
            ).fetchall():
                parts.append(Part(table, f"index {name}", int(size)))
                index_total += int(size)
            # Whatever else belongs to the table (free space and visibility maps).
            other = int(total) - int(heap) - int(toast) - index_total
            parts.append(Part(table, "maps", other))
            count = conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()
            rows[table] = int(count[0]) if count else 0
    return parts, rows


def column_bytes(settings: Settings, schema: str, sample: float = 1.0) -> dict[str, float]:
    """Average stored bytes per event of the wide columns (pg_column_size: compressed
    size when compressed), over a ``sample`` percent of the table's pages."""
    cols = ("payload", "attrs", "text", "mid", "event_id")
    exprs = ", ".join(f"avg(COALESCE(pg_column_size({c}), 0))" for c in cols)
    with connect(settings) as conn:
        row = conn.execute(
            f"SELECT {exprs} FROM {schema}.events TABLESAMPLE SYSTEM (%s)",
            (sample,),
        ).fetchone()
    return {c: float(v or 0) for c, v in zip(cols, row or (), strict=True)}


def report(settings: Settings, schema: str) -> str:
    """Return the size table as text: bytes, and bytes per event of every part."""
    parts, rows = measure(settings, schema)
    events = max(1, rows.get("events", 0))
    lines = [f"rows: {rows}"]
    total = 0
    for p in parts:
        total += p.bytes
        lines.append(
            f"{p.table:18} {p.part:42} {p.bytes / 2**20:10.1f} MiB {p.bytes / events:8.1f} B/event"
        )
    lines.append(f"{'all':18} {'':42} {total / 2**20:10.1f} MiB {total / events:8.1f} B/event")
    cols = column_bytes(settings, schema)
    lines.append(
        "stored bytes per event row (1 % sample): "
        + ", ".join(f"{c} {v:.0f}" for c, v in cols.items())
    )
    return "\n".join(lines)
