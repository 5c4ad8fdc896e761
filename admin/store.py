"""The admin API's SQL: conversations, events, tags with optimistic versions, sync views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from admin.lists import (
    CONTACT_JOIN,
    CONVERSATION_COLUMNS,
    ConversationFilter,
    Row,
    SortKey,
    Timeline,
    conversations_query,
    nest_contact,
    split_page,
    timeline_query,
)
from convsync.errors import RetryableError

_ONE = (
    "SELECT"
    + CONVERSATION_COLUMNS
    + """
FROM {s}.conversations AS c
LEFT JOIN {s}.conversation_tags AS t USING (page_id, psid)
"""
    + CONTACT_JOIN
    + """
WHERE c.page_id = %s AND c.psid = %s
"""
)

_EXISTS = "SELECT 1 FROM {s}.conversations WHERE page_id = %s AND psid = %s"

_TAGS_INSERT = """
INSERT INTO {s}.conversation_tags (page_id, psid, tags, version, updated_at)
VALUES (%s, %s, %s, 1, now()) ON CONFLICT (page_id, psid) DO NOTHING
RETURNING version
"""

_TAGS_UPDATE = """
UPDATE {s}.conversation_tags SET tags = %s, version = version + 1, updated_at = now()
WHERE page_id = %s AND psid = %s AND version = %s
RETURNING version
"""

_RUNNING = """
SELECT crawl_id, status FROM {s}.crawl_state
WHERE page_id = %(page)s AND status IN ('queued', 'running') AND crawl_id IS NOT NULL
UNION ALL
(SELECT crawl_id, status FROM {s}.crawl_history
 WHERE page_id = %(page)s AND status IN ('queued', 'running')
 ORDER BY requested_at DESC LIMIT 1)
LIMIT 1
"""

_ACTIVE = "SELECT * FROM {s}.active_syncs ORDER BY page_id"
# The dashboard lists the pages most worth a look, not all of them: at 2,000 pages the two
# full lists were 4,000 rows on every poll (17 ms of the 20 the data endpoint spent in
# Postgres and psycopg), and the page showed 2,000 rows of needs-reply counts.
DASHBOARD_PAGES: Final = 100
_STATISTICS = """
SELECT * FROM {s}.sync_statistics
ORDER BY GREATEST(last_success_at, last_failure_at) DESC NULLS LAST, page_id
LIMIT %s
"""
_RECENT = """
SELECT h.crawl_id, h.page_id, h.status, h.full_crawl, h.joined_crawl_id, h.requested_at,
       h.started_at, h.finished_at, h.conversations_done, h.messages_fetched, h.api_calls,
       h.last_error,
       CASE WHEN h.status = 'done' THEN 1.0
            WHEN s.crawl_id = h.crawl_id AND s.conversations_listed > 0
            THEN LEAST(1.0, s.conversations_fetched::double precision / s.conversations_listed)
       END AS progress
FROM {s}.crawl_history AS h
LEFT JOIN {s}.crawl_state AS s ON s.page_id = h.page_id
ORDER BY h.requested_at DESC LIMIT %s
"""
# Kept by triggers on conversations (migration 0008): counting the needs-reply rows at
# every dashboard poll took 268 ms at 2,000,000 conversations. The pages with the most.
_NEEDS_REPLY = """
SELECT page_id, conversations AS needs_reply FROM {s}.needs_reply_counts
WHERE conversations > 0 ORDER BY conversations DESC, page_id LIMIT %s
"""
# The dashboard's database figures: (key, statement, parameters).
OVERVIEW: Final = (
    ("active_syncs", _ACTIVE, None),
    ("recent_syncs", _RECENT, (20,)),
    ("sync_statistics", _STATISTICS, (DASHBOARD_PAGES,)),
    ("needs_reply", _NEEDS_REPLY, (DASHBOARD_PAGES,)),
)
_AUTO_CLEAR_DELETE = "DELETE FROM {s}.auto_clear_tags WHERE NOT (tag = ANY(%s))"
_AUTO_CLEAR_INSERT = (
    "INSERT INTO {s}.auto_clear_tags (tag) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING"
)
_SYNC_LOCK = "SELECT pg_advisory_xact_lock(hashtext('convsync-admin-sync:' || %s))"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list and the sort key the next page starts after (None at the end)."""

    items: list[Row]
    after: SortKey | None


TagsOutcome = Literal["missing", "stale"] | int


class AdminStore:
    """Queries of one schema through an async pool; psycopg errors become RetryableError.

    The lists are never prepared: a prepared statement's generic plan cannot see how few
    rows lie past a keyset cursor, and for a deep page of the largest page it chose to
    read and sort the page's whole list (docs/performance.md, "The read path"); planning
    each one costs well under a millisecond.
    """

    def __init__(self, pool: AsyncConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema_name = schema
        self.schema = sql.Identifier(schema)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self.schema)

    async def _all(self, text: str, params: Any = None) -> list[Row]:
        return await self._rows(self._q(text), params)

    async def _rows(
        self, stmt: sql.Composed, params: Any, *, prepare: bool | None = None
    ) -> list[Row]:
        try:
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(stmt, params, prepare=prepare)
                return await cur.fetchall()
        except psycopg.Error as e:
            raise RetryableError(f"admin query failed: {e}") from e

    async def conversations(
        self, page_id: str, f: ConversationFilter, *, limit: int, after: SortKey | None
    ) -> Page:
        """Return up to ``limit`` conversations after ``after``, newest last message first."""
        stmt, params = conversations_query(self.schema_name, page_id, f, limit + 1, after)
        items, next_after = split_page(await self._rows(stmt, params, prepare=False), limit, "psid")
        return Page([nest_contact(r) for r in items], next_after)

    async def timeline(
        self, which: Timeline, page_id: str, psid: str, *, limit: int, after: SortKey | None
    ) -> Page:
        """Return up to ``limit`` messages (edits and reactions applied) or events of a
        conversation after ``after``, newest first."""
        stmt, params = timeline_query(self.schema_name, which, page_id, psid, limit + 1, after)
        return Page(*split_page(await self._rows(stmt, params, prepare=False), limit, "event_id"))

    async def conversation(self, page_id: str, psid: str) -> Row | None:
        """Return the conversation with its tags, tags version and contact, or None."""
        rows = await self._all(_ONE, (page_id, psid))
        return nest_contact(rows[0]) if rows else None

    async def set_tags(
        self, page_id: str, psid: str, tags: list[str], expected: int
    ) -> TagsOutcome:
        """Replace the tags if their version is ``expected``; return the new version.

        Returns ``"missing"`` when the conversation does not exist and ``"stale"`` when
        the version moved on. Raises :class:`RetryableError` when Postgres fails.
        """
        try:
            async with self.pool.connection() as conn, conn.transaction():
                if await (await conn.execute(self._q(_EXISTS), (page_id, psid))).fetchone() is None:
                    return "missing"
                if expected == 0:
                    cur = await conn.execute(self._q(_TAGS_INSERT), (page_id, psid, tags))
                else:
                    cur = await conn.execute(self._q(_TAGS_UPDATE), (tags, page_id, psid, expected))
                row = await cur.fetchone()
        except psycopg.Error as e:
            raise RetryableError(f"tags update failed: {e}") from e
        return "stale" if row is None else int(str(row[0]))

    async def running_crawl(self, conn: psycopg.AsyncConnection[Any], page_id: str) -> Row | None:
        """Return ``{crawl_id, status}`` of the page's queued or running crawl, or None."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(self._q(_RUNNING), {"page": page_id})
        return await cur.fetchone()

    async def lock_page(self, conn: psycopg.AsyncConnection[Any], page_id: str) -> None:
        """Serialize sync requests of one page until ``conn``'s transaction ends."""
        await conn.execute(_SYNC_LOCK, (page_id,))

    async def set_auto_clear(self, tags: tuple[str, ...]) -> None:
        """Make ``auto_clear_tags`` hold exactly ``tags``. Raises RetryableError."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(self._q(_AUTO_CLEAR_DELETE), (list(tags),))
                await conn.execute(self._q(_AUTO_CLEAR_INSERT), (list(tags),))
        except psycopg.Error as e:
            raise RetryableError(f"cannot write auto_clear_tags: {e}") from e

    async def overview(self) -> dict[str, list[Row]]:
        """Return the dashboard's database figures: syncs, statistics, needs-reply counts."""
        return {key: await self._all(text, params) for key, text, params in OVERVIEW}
