"""Sync history and control over HTTP: one crawl, a page's crawls, cancelling a crawl,
and the pages needing attention (the dashboard's list).

``GET /crawls/{crawl_id}``: what a crawl did and where it stands (status, progress of
conversations and messages done / known, calls, throttle pauses, errors, skipped
conversations, timings, and whether it resumed a failed crawl or was resumed).
``GET /pages/{page_id}/crawls``: the page's crawls newest first, keyset pages with the
same signed cursors as the other lists (admin/cursors.py). ``DELETE /crawls/{crawl_id}``:
cancel a queued, running or failed crawl (``producers.crawler.request.CANCELLABLE``);
the worker reads the status before every step and stops, and the page can be crawled
again at once (a cancelled crawl's cursor is not resumed).

The rows come from ``crawl_history`` (one per request, written by the crawler at every
progress write; migrations 0003 and 0014).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from aiohttp import web
from psycopg import sql
from psycopg.rows import dict_row

from admin.api import BadRequestError, _ids, _known, _limit, json_response, problem
from admin.cursors import CursorError, Cursors
from admin.store import AdminStore
from convsync.errors import RetryableError
from producers.crawler.request import CANCEL_HISTORY, CANCEL_STATE, CANCELLABLE

_COLUMNS: Final = """
    crawl_id, page_id, status, full_crawl, joined_crawl_id, attempt, resumed_from, resumed_by,
    requested_at, started_at, finished_at, updated_at, step_seq, conversations_done,
    conversations_listed, messages_fetched, messages_expected, messages_no_details, api_calls,
    retries, throttle_waits, throttle_seconds, skipped, skipped_reasons, skipped_threads,
    last_error, failed_thread, thread_failures, resume IS NOT NULL AS has_cursor,
    (EXTRACT(EPOCH FROM requested_at) * 1000000)::bigint AS sort_us
"""
_ONE: Final = "SELECT" + _COLUMNS + "FROM {s}.crawl_history WHERE crawl_id = %s"
_PAGE: Final = (
    "SELECT"
    + _COLUMNS
    + """FROM {s}.crawl_history WHERE page_id = %(page)s {after}
ORDER BY requested_at DESC, crawl_id DESC LIMIT %(limit)s"""
)
_AFTER: Final = """AND (requested_at, crawl_id)
    < ('epoch'::timestamptz + %(cur_us)s::bigint * interval '1 microsecond', %(cur_key)s::text)"""
_SHAPE: Final = ((int,), (str,))

# The pages needing attention, one rule per reason: each statement gives (page_id,
# reason, detail, since, crawl_id). A new reason (a page whose token needs a reconnect,
# say) is one more entry here; the dashboard shows whatever reasons come back.
ATTENTION_RULES: list[tuple[str, str]] = [
    (
        "crawl_failed",
        """SELECT s.page_id, 'crawl_failed' AS reason, s.last_error AS detail,
                  s.finished_at AS since, s.crawl_id
           FROM {s}.crawl_state AS s WHERE s.status = 'failed'""",
    ),
    (
        "conversations_skipped",
        """SELECT s.page_id, 'conversations_skipped' AS reason,
                  (s.skipped_reasons ->> 'conversation_failed') || ' conversation(s) could'
                  || ' not be read' AS detail, s.finished_at AS since, s.crawl_id
           FROM {s}.crawl_state AS s
           WHERE s.status IN ('done', 'running') AND s.skipped_reasons ? 'conversation_failed'""",
    ),
    (
        "webhooks_silent",
        """SELECT h.page_id, 'webhooks_silent' AS reason,
                  'crawls find messages the webhooks did not deliver' AS detail,
                  h.silent_since AS since, NULL::text AS crawl_id
           FROM {s}.page_health AS h WHERE h.silent_since IS NOT NULL""",
    ),
    (
        "needs_reconnect",
        """SELECT p.page_id, 'needs_reconnect' AS reason, p.status_message AS detail,
                  p.token_last_error_at AS since, p.paused_crawl ->> 'crawl_id' AS crawl_id
           FROM {s}.pages AS p WHERE p.status = 'needs_reconnect'""",
    ),
]
ATTENTION_LIMIT: Final = 100


def attention_query(schema: str) -> sql.Composed:
    """Return the statement of the pages needing attention (every rule, newest first)."""
    union = "\nUNION ALL\n".join(f"({text})" for _, text in ATTENTION_RULES)
    text = f"SELECT * FROM ({union}) AS a ORDER BY since DESC NULLS LAST, page_id LIMIT {{n}}"
    return sql.SQL(text).format(s=sql.Identifier(schema), n=sql.Literal(ATTENTION_LIMIT))


def view(row: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON of one ``crawl_history`` row."""
    done, known = row["conversations_done"], row["conversations_listed"]
    started: datetime | None = row["started_at"]
    ended: datetime | None = row["finished_at"] or (row["updated_at"] if started else None)
    fraction = 1.0 if row["status"] == "done" else (min(1.0, done / known) if known else None)
    return {
        "crawl_id": row["crawl_id"],
        "page_id": row["page_id"],
        "status": row["status"],
        "full": row["full_crawl"],
        "joined_crawl_id": row["joined_crawl_id"],
        "attempt": row["attempt"],
        "resumed_from": row["resumed_from"],
        "resumed_by": row["resumed_by"],
        # a failed crawl nobody resumed yet: the page's next crawl continues from it
        "resumable": row["status"] == "failed" and row["has_cursor"] and not row["resumed_by"],
        "progress": {
            "conversations_done": done,
            "conversations_known": known,
            "messages_done": row["messages_fetched"],
            "messages_known": row["messages_expected"],
            "messages_without_details": row["messages_no_details"],
            "fraction": fraction,
            "steps": row["step_seq"],
        },
        "calls": {"graph": row["api_calls"], "retries": row["retries"]},
        "throttle": {"pauses": row["throttle_waits"], "seconds": row["throttle_seconds"]},
        "errors": {
            "last_error": row["last_error"],
            "failed_conversation": row["failed_thread"],
            "failed_conversation_crawls": row["thread_failures"],
        },
        "skipped": {
            "count": row["skipped"],
            "reasons": row["skipped_reasons"],
            "conversations": row["skipped_threads"],
        },
        "timings": {
            "requested_at": row["requested_at"],
            "started_at": started,
            "finished_at": row["finished_at"],
            "updated_at": row["updated_at"],
            "seconds": (ended - started).total_seconds() if started and ended else None,
        },
    }


def page_scope(page_id: str) -> str:
    """What a cursor of a page's crawl list is bound to (see admin/cursors.py)."""
    return "\x1f".join(("crawls", page_id))


@dataclass
class CrawlsApi:
    """The handlers; ``store`` is set when the app starts."""

    cursors: Cursors
    store: AdminStore | None = None

    def _store(self) -> AdminStore:
        assert self.store is not None, "admin store used before the app started"
        return self.store

    async def _rows(self, text: str, params: Any, after: str = "") -> list[dict[str, Any]]:
        store = self._store()
        stmt = sql.SQL(text).format(s=store.schema, after=sql.SQL(after))
        try:
            async with store.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(stmt, params)
                return await cur.fetchall()
        except psycopg.Error as e:
            raise RetryableError(f"crawl history query failed: {e}") from e

    async def crawl(self, request: web.Request) -> web.Response:
        """GET /crawls/{crawl_id}: the crawl's status, progress, cost, errors, timings."""
        (crawl_id,) = _ids(request, "crawl_id")
        _known(request.query)
        rows = await self._rows(_ONE, (crawl_id,))
        if not rows:
            return problem(404, "no such crawl")
        return json_response(view(rows[0]))

    async def page_crawls(self, request: web.Request) -> web.Response:
        """GET /pages/{page_id}/crawls: the page's crawls, newest first, keyset pages."""
        (page_id,) = _ids(request, "page_id")
        q = request.query
        _known(q, "limit", "cursor")
        limit = _limit(q, 50)
        scope = page_scope(page_id)
        params: dict[str, Any] = {"page": page_id, "limit": limit + 1}
        after = ""
        if "cursor" in q:
            try:
                params["cur_us"], params["cur_key"] = self.cursors.decode(
                    scope, q["cursor"], _SHAPE
                )
            except CursorError as e:
                raise BadRequestError(str(e)) from e
            after = _AFTER
        rows = await self._rows(_PAGE, params, after)
        page = rows[:limit]
        nxt = None
        if len(rows) > limit and page:
            nxt = self.cursors.encode(scope, (page[-1]["sort_us"], page[-1]["crawl_id"]))
        return json_response({"items": [view(r) for r in page], "next_cursor": nxt})

    async def cancel(self, request: web.Request) -> web.Response:
        """DELETE /crawls/{crawl_id}: cancel a queued, running or failed crawl (200 with
        the crawl); 404 for no such crawl, 409 for one that has ended otherwise."""
        (crawl_id,) = _ids(request, "crawl_id")
        _known(request.query)
        store = self._store()
        states = list(CANCELLABLE)
        try:
            async with store.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    sql.SQL(CANCEL_HISTORY).format(schema=store.schema), (crawl_id, states)
                )
                row = await cur.fetchone()
                if row is not None:
                    await conn.execute(
                        sql.SQL(CANCEL_STATE).format(schema=store.schema),
                        (row[0], crawl_id, states),
                    )
        except psycopg.Error as e:
            raise RetryableError(f"crawl cancel failed: {e}") from e
        rows = await self._rows(_ONE, (crawl_id,))
        if not rows:
            return problem(404, "no such crawl")
        if row is None:
            status = rows[0]["status"]
            return problem(
                409, f"the crawl is {status}: only a queued, running or failed one can be cancelled"
            )
        return json_response(view(rows[0]))


async def pages_needing_attention(store: AdminStore) -> list[dict[str, Any]]:
    """Return the pages needing attention (see :data:`ATTENTION_RULES`).

    Raises :class:`RetryableError` when Postgres fails.
    """
    try:
        async with store.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(attention_query(store.schema_name))
            return await cur.fetchall()
    except psycopg.Error as e:
        raise RetryableError(f"attention query failed: {e}") from e
