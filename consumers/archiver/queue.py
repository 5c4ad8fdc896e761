"""``attachment_files`` as the archiver's work queue, through a psycopg pool.

One archiver at a time works on a schema: it holds a session advisory lock on a
connection of its own for as long as it runs (:meth:`ArchiveQueue.lead`). So the rows it
marks as taken (``claimed_at``) are its own, and a new run may release every claim at
start: a claim still set then is the leftover of a killed run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, LiteralString

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from consumers.archiver.extract import Attachment
from convsync.errors import ConfigError, RetryableError

Conn = psycopg.Connection[tuple[object, ...]]
Key = tuple[str, str, str, int]

_LEAD: Final = (
    "SELECT pg_try_advisory_lock(('x' || substr(md5('convsync-archiver/' || %s), 1, 16))"
    "::bit(64)::bigint)"
)
# A row for every attachment seen on the topic; a failed one gets a second chance when a
# copy of its event brings another URL (the crawler's after the webhook's, say).
_DISCOVER: Final = """
    INSERT INTO {s}.attachment_files AS f
        (page_id, event_id, psid, idx, url, status, error, error_detail)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (page_id, event_id, psid, idx) DO UPDATE
    SET url = EXCLUDED.url, status = EXCLUDED.status, error = EXCLUDED.error,
        error_detail = EXCLUDED.error_detail, attempts = 0, due_at = now(),
        claimed_at = NULL, updated_at = now()
    WHERE f.status = 'failed' AND EXCLUDED.url IS NOT NULL
      AND f.url IS DISTINCT FROM EXCLUDED.url
"""
_SAVE_OFFSET: Final = """
    INSERT INTO {s}.consumer_offsets ("group", topic, "partition", next_offset)
    VALUES (%s, %s, %s, %s)
    ON CONFLICT ("group", topic, "partition") DO UPDATE
    SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""
_LOAD_OFFSETS: Final = """
    SELECT "partition", next_offset FROM {s}.consumer_offsets WHERE "group" = %s AND topic = %s
"""
_RELEASE: Final = """
    UPDATE {s}.attachment_files SET claimed_at = NULL
    WHERE status = 'pending' AND claimed_at IS NOT NULL
"""
_CLAIM: Final = """
    UPDATE {s}.attachment_files AS f SET claimed_at = now()
    FROM (SELECT page_id, event_id, psid, idx FROM {s}.attachment_files
          WHERE status = 'pending' AND claimed_at IS NULL AND due_at <= now()
          ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED) AS d
    WHERE f.page_id = d.page_id AND f.event_id = d.event_id AND f.psid = d.psid
      AND f.idx = d.idx
    RETURNING f.page_id, f.event_id, f.psid, f.idx, f.url, f.attempts
"""
_BY_URL: Final = """
    SELECT sha256, size, storage_key, content_type FROM {s}.attachment_files
    WHERE url = %s AND status = 'stored' LIMIT 1
"""
_STORED: Final = """
    UPDATE {s}.attachment_files
    SET status = 'stored', sha256 = %s, size = %s, storage_key = %s, content_type = %s,
        attempts = attempts + %s, claimed_at = NULL, error = NULL, error_detail = NULL,
        fetched_at = now(), updated_at = now()
    WHERE page_id = %s AND event_id = %s AND psid = %s AND idx = %s AND status = 'pending'
"""
_FAILED: Final = """
    UPDATE {s}.attachment_files
    SET status = 'failed', error = %s, error_detail = %s, attempts = attempts + %s,
        claimed_at = NULL, fetched_at = now(), updated_at = now()
    WHERE page_id = %s AND event_id = %s AND psid = %s AND idx = %s AND status = 'pending'
"""
_RETRY: Final = """
    UPDATE {s}.attachment_files
    SET error = %s, error_detail = %s, attempts = attempts + 1, claimed_at = NULL,
        due_at = now() + make_interval(secs => %s), updated_at = now()
    WHERE page_id = %s AND event_id = %s AND psid = %s AND idx = %s AND status = 'pending'
"""
_DEPTH: Final = """
    SELECT count(*), count(*) FILTER (WHERE due_at <= now())
    FROM {s}.attachment_files WHERE status = 'pending'
"""


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed row: what to fetch and how many tries it has had."""

    key: Key
    url: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a stored row says about its file."""

    sha256: str
    size: int
    storage_key: str
    content_type: str | None


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as e:
        raise RetryableError(f"Postgres: {what}: {e}") from e
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as e:
        raise ConfigError(
            f"Postgres: {what}: {e.diag.message_primary}; run `convsync migrate`"
        ) from e


class ArchiveQueue:
    """The archiver's statements against one schema, each on a pooled connection."""

    def __init__(self, pool: ConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self._ident = sql.Identifier(schema)

    def _q(self, text: LiteralString) -> sql.Composed:
        return sql.SQL(text).format(s=self._ident)

    @contextlib.contextmanager
    def lead(self) -> Iterator[Conn | None]:
        """Hold the schema's archiver lock while inside; yield its connection, or None
        when another archiver holds it. The lock goes with the connection, so a killed
        process frees it at once."""
        with _translated("archiver lock"), self.pool.connection() as conn:
            # The pool's connections are in autocommit: no transaction stays open while
            # the lock is held.
            row = conn.execute(_LEAD, (self.schema,)).fetchone()
            if not row or not row[0]:
                yield None
                return
            try:
                yield conn
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock_all()")

    @staticmethod
    def still_leading(conn: Conn) -> None:
        """Raise :class:`RetryableError` when the lock's connection is gone (and the lock
        with it: another archiver may have taken over)."""
        with _translated("archiver lock lost"):
            conn.execute("SELECT 1")

    def release_claims(self) -> int:
        """Release the claims of earlier runs; return how many (the lock is held)."""
        with _translated("release claims"), self.pool.connection() as conn:
            return conn.execute(self._q(_RELEASE)).rowcount

    def load_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Return the stored next offset of each partition of ``topic`` for ``group``."""
        with _translated("load offsets"), self.pool.connection() as conn:
            rows = conn.execute(self._q(_LOAD_OFFSETS), (group, topic)).fetchall()
        return {int(str(p)): int(str(n)) for p, n in rows}

    def discover(
        self,
        found: Sequence[Attachment],
        *,
        group: str,
        topic: str,
        next_offsets: Mapping[int, int],
    ) -> None:
        """Record ``found`` and the offsets read past, in one transaction. An attachment
        without a URL is recorded failed (``no_url``): nothing can be fetched for it."""
        rows = [
            (a.page_id, a.event_id, a.psid, a.idx, a.url)
            + (("pending", None, None) if a.url else ("failed", "no_url", "no URL in attachment"))
            for a in found
        ]
        with _translated("record attachments"), self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            if rows:
                cur.executemany(self._q(_DISCOVER), rows)
            cur.executemany(
                self._q(_SAVE_OFFSET), [(group, topic, p, n) for p, n in next_offsets.items()]
            )

    def claim(self, limit: int) -> list[Job]:
        """Take up to ``limit`` due rows, oldest due first."""
        with _translated("claim"), self.pool.connection() as conn:
            rows = conn.execute(self._q(_CLAIM), (limit,)).fetchall()
        return [
            Job(
                (str(p), str(e), str(u), int(str(i))),
                None if url is None else str(url),
                int(str(n)),
            )
            for p, e, u, i, url, n in rows
        ]

    def stored_by_url(self, url: str) -> FileInfo | None:
        """Return the file of a stored row fetched from ``url``, if there is one."""
        with _translated("find by url"), self.pool.connection() as conn:
            row = conn.execute(self._q(_BY_URL), (url,)).fetchone()
        if row is None:
            return None
        sha, size, key, ctype = row
        return FileInfo(str(sha), int(str(size)), str(key), None if ctype is None else str(ctype))

    def mark_stored(self, key: Key, info: FileInfo, *, fetched: bool) -> None:
        """Record that ``key``'s file is on disk (call only once it is)."""
        with _translated("mark stored"), self.pool.connection() as conn:
            conn.execute(
                self._q(_STORED),
                (info.sha256, info.size, info.storage_key, info.content_type, int(fetched), *key),
            )

    def mark_failed(self, key: Key, reason: str, detail: str, *, fetched: bool) -> None:
        """Record a permanent failure of ``key``."""
        with _translated("mark failed"), self.pool.connection() as conn:
            conn.execute(self._q(_FAILED), (reason, detail[:500], int(fetched), *key))

    def mark_retry(self, key: Key, reason: str, detail: str, *, delay: float) -> None:
        """Count a transient failure of ``key``; it is due again in ``delay`` seconds."""
        with _translated("mark retry"), self.pool.connection() as conn:
            conn.execute(self._q(_RETRY), (reason, detail[:500], delay, *key))

    def depth(self) -> tuple[int, int]:
        """Return (pending rows, of which due now)."""
        with _translated("queue depth"), self.pool.connection() as conn:
            row = conn.execute(self._q(_DEPTH)).fetchone()
        assert row is not None
        return int(str(row[0])), int(str(row[1]))
