"""The demo's verdict: Postgres compared with the simulated world's truth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from psycopg import sql

from cli.demo.contacts import ContactComparison
from cli.demo.media import MediaComparison
from cli.demo.options import TruthRow
from convsync.db import connect
from convsync.settings import Settings
from deploy.simulator.instagram import ACCOUNT as INSTAGRAM_ACCOUNT


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
    # Conversations whose platform is not their page's or account's.
    platform_mismatches: int = 0
    instagram_conversations: int = 0
    # Instagram message rows the crawler saw (a thread id: only Graph names it).
    instagram_crawled: int = 0
    media: MediaComparison | None = None  # when the demo ran the archiver
    # Conversations of chat-plugin guests (a user_ref, no PSID) stored under their own key.
    guest_conversations: int = 0
    contacts: ContactComparison | None = None  # users' names from Graph

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.unexpected == 0
            and self.duplicates == 0
            and self.conversations_expected == self.conversations_stored
            and self.count_mismatches == 0
            and self.watermark_mismatches == 0
            and self.platform_mismatches == 0
            and (self.media is None or self.media.ok)
            and (self.contacts is None or self.contacts.ok)
        )


def compare(
    settings: Settings,
    truth: set[TruthRow],
    read_watermarks: dict[tuple[str, str], int],
    guests: AbstractSet[tuple[str, str]] = frozenset(),
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
        crawled_row = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {}.events WHERE kind = 'message'"
                " AND platform = 'instagram' AND thread_id IS NOT NULL"
            ).format(schema)
        ).fetchone()
        convs = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, message_count,"
                " (extract(epoch FROM read_watermark) * 1000)::bigint, platform"
                " FROM {}.conversations"
            ).format(schema)
        ).fetchall()
    stored = {
        (str(a), str(b), str(c), None if d is None else str(d), None if e is None else str(e))
        for a, b, c, d, e in rows
    }
    expected_counts = Counter((p, u) for p, u, _, _, _ in truth)
    conv_map = {(str(p), str(u)): (int(str(n)), w) for p, u, n, w, _ in convs}
    platform_of = {
        str(p): "instagram" if str(p) == INSTAGRAM_ACCOUNT else "messenger" for p, *_ in convs
    }
    platform_mismatches = sum(1 for p, *_, f in convs if f != platform_of[str(p)])
    instagram_conversations = sum(1 for p, *_ in convs if str(p) == INSTAGRAM_ACCOUNT)
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
        platform_mismatches=platform_mismatches,
        instagram_conversations=instagram_conversations,
        instagram_crawled=int(str(crawled_row[0])) if crawled_row else 0,
        guest_conversations=len(guests & set(conv_map)),
    )
