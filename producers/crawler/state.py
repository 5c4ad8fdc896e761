"""The crawl progress projection in Postgres: ``crawl_state`` and ``crawl_history``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from convsync.errors import ConfigError, RetryableError
from producers.crawler import resume
from schemas.crawl import CrawlRequest, CrawlStep

log = logging.getLogger(__name__)

Status = Literal["queued", "running", "done", "failed", "joined", "cancelled", "paused"]

# Seconds to wait for a connection per attempt (a new one, or one from the pool).
CONNECT_TIMEOUT: Final = 5
# Seconds the pool keeps retrying one connection before it gives it up: short, so that
# it never sleeps long between its own attempts during an outage (a getconn after it
# gave up starts a fresh attempt at once; the worker's retry loop sets the pace).
RECONNECT_TIMEOUT: Final = 10.0

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]
# A missing schema is not an outage: waiting for it would hide the mistake.
_UNMIGRATED: Final = (pgerrors.UndefinedTable, pgerrors.UndefinedColumn, pgerrors.InvalidSchemaName)


def make_pool(url: str, *, size: int) -> Pool:
    """Return a pool of up to ``size`` connections to ``url``, not yet open.

    It reconnects in the background and checks a connection before handing it out, so
    a Postgres restart costs the writes in flight a retry, never the process.
    """
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "convsync-crawler",
        },
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_TIMEOUT,
        name="crawler",
        open=False,
    )


_STATE = """
INSERT INTO {schema}.crawl_state AS s (
    page_id, status, crawl_id, full_crawl, conversations_cursor, since_watermark,
    last_completed_at, conversations_fetched, messages_fetched, api_calls, throttle_waits,
    skipped, last_error, started_at, finished_at, updated_at, step_seq, conversations_listed,
    messages_expected, messages_no_details, retries, throttle_seconds, skipped_reasons)
VALUES (%(page_id)s, %(status)s, %(crawl_id)s, %(full)s, %(cursor)s, %(since)s,
    %(completed)s, %(conversations)s, %(messages)s, %(api_calls)s, %(throttle_waits)s,
    %(skipped)s, %(error)s, %(started)s, %(finished)s, now(), %(seq)s, %(listed)s,
    %(expected)s, %(no_details)s, %(retries)s, %(throttle_seconds)s, %(reasons)s)
ON CONFLICT (page_id) DO UPDATE SET
    status = EXCLUDED.status, crawl_id = EXCLUDED.crawl_id, full_crawl = EXCLUDED.full_crawl,
    conversations_cursor = EXCLUDED.conversations_cursor,
    since_watermark = EXCLUDED.since_watermark,
    last_completed_at = COALESCE(EXCLUDED.last_completed_at, s.last_completed_at),
    conversations_fetched = EXCLUDED.conversations_fetched,
    messages_fetched = EXCLUDED.messages_fetched, api_calls = EXCLUDED.api_calls,
    throttle_waits = EXCLUDED.throttle_waits, skipped = EXCLUDED.skipped,
    last_error = EXCLUDED.last_error, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, updated_at = now(), step_seq = EXCLUDED.step_seq,
    conversations_listed = EXCLUDED.conversations_listed,
    messages_expected = EXCLUDED.messages_expected,
    messages_no_details = EXCLUDED.messages_no_details, retries = EXCLUDED.retries,
    throttle_seconds = EXCLUDED.throttle_seconds, skipped_reasons = EXCLUDED.skipped_reasons,
    joined_requests = CASE WHEN s.crawl_id IS DISTINCT FROM EXCLUDED.crawl_id
                           THEN 0 ELSE s.joined_requests END
WHERE s.crawl_id IS DISTINCT FROM EXCLUDED.crawl_id
   OR (s.step_seq <= EXCLUDED.step_seq AND s.status <> 'cancelled')
"""

_HISTORY = """
INSERT INTO {schema}.crawl_history AS h (
    crawl_id, page_id, full_crawl, status, joined_crawl_id, requested_at, started_at,
    finished_at, step_seq, conversations_done, messages_fetched, messages_no_details,
    api_calls, retries, throttle_waits, throttle_seconds, skipped, skipped_reasons,
    last_error, updated_at, conversations_listed, messages_expected, skipped_threads)
VALUES (%(crawl_id)s, %(page_id)s, %(full)s, %(status)s, %(joined)s, %(requested)s,
    %(started)s, %(finished)s, %(seq)s, %(conversations)s, %(messages)s, %(no_details)s,
    %(api_calls)s, %(retries)s, %(throttle_waits)s, %(throttle_seconds)s, %(skipped)s,
    %(reasons)s, %(error)s, now(), %(listed)s, %(expected)s,
    CASE WHEN %(thread)s::text IS NULL THEN '[]'::jsonb
         ELSE jsonb_build_array(%(thread)s::text) END)
ON CONFLICT (crawl_id) DO UPDATE SET
    status = EXCLUDED.status, joined_crawl_id = EXCLUDED.joined_crawl_id,
    -- a resumed crawl started when it took over (resume.claim), not at the step's start
    started_at = CASE WHEN h.resumed_from IS NULL THEN EXCLUDED.started_at ELSE h.started_at END,
    finished_at = EXCLUDED.finished_at,
    conversations_listed = EXCLUDED.conversations_listed,
    messages_expected = EXCLUDED.messages_expected,
    skipped_threads = CASE
        WHEN %(thread)s::text IS NULL OR h.skipped_threads ? %(thread)s::text
             OR jsonb_array_length(h.skipped_threads) >= %(max_threads)s
        THEN h.skipped_threads ELSE h.skipped_threads || jsonb_build_array(%(thread)s::text) END,
    step_seq = EXCLUDED.step_seq, conversations_done = EXCLUDED.conversations_done,
    messages_fetched = EXCLUDED.messages_fetched,
    messages_no_details = EXCLUDED.messages_no_details, api_calls = EXCLUDED.api_calls,
    retries = EXCLUDED.retries, throttle_waits = EXCLUDED.throttle_waits,
    throttle_seconds = EXCLUDED.throttle_seconds, skipped = EXCLUDED.skipped,
    skipped_reasons = EXCLUDED.skipped_reasons, last_error = EXCLUDED.last_error,
    updated_at = now()
WHERE h.status IN ('queued', 'running', 'paused')
    AND (h.status = 'queued' OR h.step_seq <= EXCLUDED.step_seq)
"""

# Appended to _HISTORY: a row comes back only if it was inserted or updated.
_MOVED = "RETURNING h.crawl_id\n"

_QUEUED = """
INSERT INTO {schema}.crawl_history (crawl_id, page_id, full_crawl, status, requested_at)
VALUES (%s, %s, %s, 'queued', %s) ON CONFLICT (crawl_id) DO NOTHING
"""

_JOINED_STATE = """
UPDATE {schema}.crawl_state SET joined_requests = joined_requests + 1, updated_at = now()
WHERE page_id = %s AND crawl_id = %s
"""


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(value: datetime) -> int:
    """Return ``value`` as ms since the epoch."""
    return int(value.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Progress:
    """A crawl's position to project: the record it came from, its status and step."""

    record: CrawlRequest
    status: Status
    step: CrawlStep | None
    seq: int
    error: str | None = None
    finished_ms: int | None = None
    joined: str | None = None
    # the conversation this step skipped (resume.skip_failed), if any
    skipped_thread: str | None = None


def _params(p: Progress) -> dict[str, Any]:
    c = p.step.counters if p.step is not None else None
    skipped = dict(c.skipped) if c is not None else {}
    started = p.step.started_at if p.step is not None else None
    return {
        "page_id": p.record.page_id,
        "crawl_id": p.record.crawl_id,
        "status": p.status,
        "full": p.record.full,
        "cursor": p.step.conversations_url if p.step is not None else None,
        "since": _ts(p.record.since),
        "completed": _ts(started) if p.status == "done" else None,
        "conversations": c.conversations_done if c else 0,
        "listed": c.conversations_listed if c else 0,
        "expected": c.messages_expected if c else 0,
        "messages": c.messages if c else 0,
        "no_details": c.messages_without_details if c else 0,
        "api_calls": c.api_calls if c else 0,
        "retries": c.retries if c else 0,
        "throttle_waits": c.throttle_waits if c else 0,
        "throttle_seconds": c.throttle_seconds if c else 0.0,
        "skipped": sum(skipped.values()),
        "reasons": orjson.dumps(skipped).decode(),
        "error": p.error,
        "started": _ts(started),
        "finished": _ts(p.finished_ms),
        "seq": p.seq,
        "requested": _ts(p.record.requested_at),
        "joined": p.joined,
        "thread": p.skipped_thread,
        "max_threads": resume.MAX_SKIPPED_THREADS,
    }


class CrawlStateStore:
    """Writes crawl progress; every write is the full, cumulative state (idempotent)."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool = pool
        self._schema_name = schema
        self.schema = sql.Identifier(schema)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(schema=self.schema)

    async def project(self, p: Progress) -> None:
        """Upsert ``crawl_history`` (and ``crawl_state`` unless it is a join).

        Raises :class:`RetryableError` when Postgres fails, :class:`ConfigError` when
        the schema is not migrated.
        """
        params = _params(p)
        try:
            async with (
                self.pool.connection(timeout=CONNECT_TIMEOUT) as conn,
                conn.transaction(),
            ):
                if p.status == "joined":
                    # A redelivered join record finds its history row joined already:
                    # the count goes up only when this write moved the row (from queued,
                    # or inserted it), so it counts requests, not deliveries.
                    cur = await conn.execute(self._q(_HISTORY + _MOVED), params)
                    if await cur.fetchone() is not None:
                        await conn.execute(self._q(_JOINED_STATE), (p.record.page_id, p.joined))
                else:
                    await conn.execute(self._q(_STATE), params)
                    await conn.execute(self._q(_HISTORY), params)
                    if p.status == "failed":
                        # the cursor the page's next crawl resumes from (resume.py)
                        await conn.execute(
                            self._q(resume.FAILED),
                            {
                                "crawl_id": p.record.crawl_id,
                                "resume": resume.resume_json(p.record),
                                "thread": resume.failed_thread(p.record),
                            },
                        )
        except _UNMIGRATED as e:
            raise ConfigError(f"crawl state: the schema is not migrated ({e})") from e
        except psycopg.Error as e:
            raise RetryableError(f"crawl state write failed: {e}") from e

    async def project_running(self, batch: Sequence[Progress]) -> None:
        """Upsert the ``running`` progress of several crawls in one transaction (the
        statements of :meth:`project`, pipelined). Raises like :meth:`project`."""
        if not batch:
            return
        assert all(p.status == "running" for p in batch)
        params = [_params(p) for p in batch]
        try:
            async with (
                self.pool.connection(timeout=CONNECT_TIMEOUT) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                await cur.executemany(self._q(_STATE), params)
                await cur.executemany(self._q(_HISTORY), params)
        except _UNMIGRATED as e:
            raise ConfigError(f"crawl state: the schema is not migrated ({e})") from e
        except psycopg.Error as e:
            raise RetryableError(f"crawl state write failed: {e}") from e

    async def resume(
        self,
        record: CrawlRequest,
        *,
        conversation_failures: int,
        refusal: Callable[[CrawlRequest], str | None],
    ) -> resume.Resumed | None:
        """Claim the cursor of the page's failed last crawl for ``record`` (see
        :func:`resume.claim`). Raises like :meth:`project`."""
        try:
            async with (
                self.pool.connection(timeout=CONNECT_TIMEOUT) as conn,
                conn.transaction(),
            ):
                return await resume.claim(
                    conn,
                    self._schema_name,
                    record,
                    conversation_failures=conversation_failures,
                    refusal=refusal,
                )
        except _UNMIGRATED as e:
            raise ConfigError(f"crawl state: the schema is not migrated ({e})") from e
        except psycopg.Error as e:
            raise RetryableError(f"crawl resume failed: {e}") from e

    async def request_status(self, crawl_id: str) -> str | None:
        """Return the ``crawl_history`` status of ``crawl_id`` (None: no row).

        Raises like :meth:`project`.
        """
        row = await self._read_one(
            "SELECT status FROM {schema}.crawl_history WHERE crawl_id = %s", crawl_id
        )
        return None if row is None else str(row[0])

    async def cancelled_among(self, crawl_ids: list[str]) -> set[str]:
        """Return which of ``crawl_ids`` are cancelled (their ``crawl_history`` rows say
        so). Raises like :meth:`project`."""
        rows = await self._read(
            "SELECT crawl_id FROM {schema}.crawl_history"
            " WHERE crawl_id = ANY(%s) AND status = 'cancelled'",
            crawl_ids,
        )
        return {str(row[0]) for row in rows}

    async def last_completed_ms(self, page_id: str) -> int | None:
        """Return when the last completed crawl of ``page_id`` started (ms), if any.

        Raises like :meth:`project`.
        """
        row = await self._read_one(
            "SELECT last_completed_at FROM {schema}.crawl_state WHERE page_id = %s", page_id
        )
        if row is None or row[0] is None:
            return None
        value = row[0]
        assert isinstance(value, datetime)
        return to_ms(value)

    async def _read_one(self, query: str, key: str) -> tuple[Any, ...] | None:
        """Return the first row of ``query`` for ``key``. Raises like :meth:`project`."""
        rows = await self._read(query, key)
        return rows[0] if rows else None

    async def _read(self, query: str, param: Any) -> list[tuple[Any, ...]]:
        """Return the rows of ``query`` for its one parameter. Raises like :meth:`project`."""
        try:
            async with self.pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                cur = await conn.execute(self._q(query), (param,))
                return await cur.fetchall()
        except _UNMIGRATED as e:
            raise ConfigError(f"crawl state: the schema is not migrated ({e})") from e
        except psycopg.Error as e:
            raise RetryableError(f"crawl state read failed: {e}") from e


def record_queued(conn: psycopg.Connection[Any], schema: str, record: CrawlRequest) -> None:
    """Insert the ``queued`` history row of a new request (no-op if already known)."""
    conn.execute(
        sql.SQL(_QUEUED).format(schema=sql.Identifier(schema)),
        (record.crawl_id, record.page_id, record.full, _ts(record.requested_at)),
    )
