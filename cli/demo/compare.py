"""The demo's verdict: Postgres compared with the simulated world's truth."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from psycopg import sql

from cli.demo.options import TruthRow
from convsync.db import connect
from convsync.settings import Settings


@dataclass(frozen=True, slots=True)
class Comparison:
    """Postgres against the truth."""

    expected_messages: int
    stored_messages: int
    missing: int
    unexpected: int
    duplicates: int
    conversations_expected: int
    conversations_stored: int
    conversation_set_mismatches: int
    count_mismatches: int
    watermark_mismatches: int

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.unexpected == 0
            and self.duplicates == 0
            and self.conversations_expected == self.conversations_stored
            and self.count_mismatches == 0
            and self.watermark_mismatches == 0
        )


def compare(
    settings: Settings, truth: set[TruthRow], read_watermarks: dict[tuple[str, str], int]
) -> Comparison:
    """Compare the demo schema with the truth (messages, conversations, watermarks)."""
    schema = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, mid, text, direction FROM {}.events WHERE kind = 'message'"
            ).format(schema)
        ).fetchall()
        dup_row = conn.execute(
            sql.SQL(
                "SELECT count(*) - count(DISTINCT (page_id, mid)) FROM {}.events"
                " WHERE kind = 'message'"
            ).format(schema)
        ).fetchone()
        convs = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, message_count,"
                " (extract(epoch FROM read_watermark) * 1000)::bigint FROM {}.conversations"
            ).format(schema)
        ).fetchall()
    stored = {
        (str(a), str(b), str(c), None if d is None else str(d), None if e is None else str(e))
        for a, b, c, d, e in rows
    }
    expected_counts = Counter((p, u) for p, u, _, _, _ in truth)
    conv_map = {(str(p), str(u)): (int(str(n)), w) for p, u, n, w in convs}
    count_mismatches = sum(
        1 for k, n in expected_counts.items() if conv_map.get(k, (None,))[0] != n
    )
    watermark_mismatches = sum(
        1
        for k, w in read_watermarks.items()
        if conv_map.get(k) is None or conv_map[k][1] is None or int(str(conv_map[k][1])) != w
    )
    return Comparison(
        expected_messages=len(truth),
        stored_messages=len(rows),
        missing=len(truth - stored),
        unexpected=len(stored - truth),
        duplicates=int(str(dup_row[0])) if dup_row else 0,
        conversations_expected=len(expected_counts),
        conversations_stored=len(conv_map),
        conversation_set_mismatches=len(set(conv_map) ^ set(expected_counts)),
        count_mismatches=count_mismatches,
        watermark_mismatches=watermark_mismatches,
    )
