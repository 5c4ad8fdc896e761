"""The admin API's SQL: conversations, events, tags with optimistic versions, sync views."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from convsync.errors import RetryableError

Row = dict[str, Any]

_CONVERSATION_COLUMNS: Final = """
    c.page_id, c.psid, c.thread_id, c.first_message_at, c.last_message_at, c.message_count,
    c.last_message_text, c.last_inbound_at, c.last_outbound_at, c.needs_reply,
    c.read_watermark, c.delivered_watermark, c.version AS projection_version,
    COALESCE(t.tags, '{{}}') AS tags, COALESCE(t.version, 0) AS tags_version
"""

_LIST = (
    "SELECT"
    + _CONVERSATION_COLUMNS
    + """,
    (EXTRACT(EPOCH FROM c.last_message_at) * 1000000)::bigint AS sort_us
FROM {s}.conversations AS c
LEFT JOIN {s}.conversation_tags AS t USING (page_id, psid)
WHERE c.page_id = %(page)s
  AND (%(needs_reply)s::boolean IS NULL OR c.needs_reply = %(needs_reply)s::boolean)
  AND (%(since)s::timestamptz IS NULL OR c.last_message_at >= %(since)s::timestamptz)
  AND (NOT %(has_cursor)s::boolean
       OR (COALESCE(c.last_message_at, '-infinity'::timestamptz), c.psid)
          < (COALESCE('epoch'::timestamptz + %(cur_us)s::bigint * interval '1 microsecond',
                      '-infinity'::timestamptz),
             %(cur_psid)s::text))
ORDER BY COALESCE(c.last_message_at, '-infinity'::timestamptz) DESC, c.psid DESC
LIMIT %(limit)s
"""
)

_ONE = (
    "SELECT"
    + _CONVERSATION_COLUMNS
    + """
FROM {s}.conversations AS c
LEFT JOIN {s}.conversation_tags AS t USING (page_id, psid)
WHERE c.page_id = %s AND c.psid = %s
"""
)

_EVENTS = """
SELECT event_id, kind, source, occurred_at, direction, mid, text, watermark, thread_id, attrs
FROM {s}.events WHERE page_id = %s AND psid = %s
ORDER BY occurred_at DESC, event_id COLLATE "C" DESC LIMIT %s
"""

_MESSAGES = """
SELECT event_id, mid, occurred_at, direction, text, original_text, edit_number, reactions
FROM {s}.messages WHERE page_id = %s AND psid = %s
ORDER BY occurred_at DESC, event_id COLLATE "C" DESC LIMIT %s
"""

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
_STATISTICS = "SELECT * FROM {s}.sync_statistics ORDER BY page_id"
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
_NEEDS_REPLY = """
SELECT page_id, count(*) AS needs_reply FROM {s}.conversations
WHERE needs_reply GROUP BY page_id ORDER BY page_id
"""
_AUTO_CLEAR_DELETE = "DELETE FROM {s}.auto_clear_tags WHERE NOT (tag = ANY(%s))"
_AUTO_CLEAR_INSERT = (
    "INSERT INTO {s}.auto_clear_tags (tag) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING"
)
_SYNC_LOCK = "SELECT pg_advisory_xact_lock(hashtext('convsync-admin-sync:' || %s))"


@dataclass(frozen=True, slots=True)
class Page:
    """A page of conversations and the cursor of the next one (None at the end).

    A cursor is the last row's ``(last_message_at in µs since the epoch or None, psid)``.
    """

    items: list[Row]
    next_cursor: tuple[int | None, str] | None


TagsOutcome = Literal["missing", "stale"] | int


class AdminStore:
    """Queries of one schema through an async pool; psycopg errors become RetryableError."""

    def __init__(self, pool: AsyncConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = sql.Identifier(schema)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self.schema)

    async def _all(self, text: str, params: Any = None) -> list[Row]:
        try:
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(self._q(text), params)
                return await cur.fetchall()
        except psycopg.Error as e:
            raise RetryableError(f"admin query failed: {e}") from e

    async def conversations(
        self,
        page_id: str,
        *,
        needs_reply: bool | None,
        since: datetime | None,
        limit: int,
        cursor: tuple[int | None, str] | None,
    ) -> Page:
        """Return up to ``limit`` conversations, newest ``last_message_at`` first."""
        rows = await self._all(
            _LIST,
            {
                "page": page_id,
                "needs_reply": needs_reply,
                "since": since,
                "has_cursor": cursor is not None,
                "cur_us": cursor[0] if cursor else None,
                "cur_psid": cursor[1] if cursor else None,
                "limit": limit + 1,
            },
        )
        more = len(rows) > limit
        rows = rows[:limit]
        for r in rows:
            r["_cursor"] = (r.pop("sort_us"), r["psid"])
        next_cursor = rows[-1]["_cursor"] if more and rows else None
        for r in rows:
            del r["_cursor"]
        return Page(rows, next_cursor)

    async def conversation(self, page_id: str, psid: str) -> Row | None:
        """Return the conversation with its tags and tags version, or None."""
        rows = await self._all(_ONE, (page_id, psid))
        return rows[0] if rows else None

    async def events(self, page_id: str, psid: str, limit: int) -> list[Row]:
        """Return the newest ``limit`` stored events of the conversation, newest first."""
        return await self._all(_EVENTS, (page_id, psid, limit))

    async def messages(self, page_id: str, psid: str, limit: int) -> list[Row]:
        """Return the newest ``limit`` messages (edits and reactions applied), newest first."""
        return await self._all(_MESSAGES, (page_id, psid, limit))

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

    async def overview(self, recent: int = 20) -> dict[str, list[Row]]:
        """Return the dashboard's database figures: syncs, statistics, needs-reply counts."""
        return {
            "active_syncs": await self._all(_ACTIVE),
            "recent_syncs": await self._all(_RECENT, (recent,)),
            "sync_statistics": await self._all(_STATISTICS),
            "needs_reply": await self._all(_NEEDS_REPLY),
        }
