"""The Postgres side of the materializer: one transaction per batch, offsets included."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from consumers.materializer import statements as st
from consumers.materializer.rows import STAGE_COLUMNS, StageRow
from convsync.errors import ConfigError, PoisonError, RetryableError
from convsync.settings import Settings
from schemas.migrate import validate_schema_name

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[object, ...]]

STAGE_EVENT_ID = STAGE_COLUMNS.index("event_id")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did."""

    staged: int
    inserted: int
    conversations_changed: int


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Re-raise psycopg errors as RetryableError (connection, shutdown, conflicts),
    PoisonError (data the database will never accept) or ConfigError (schema missing)."""
    try:
        yield
    except (pgerrors.UndefinedTable, pgerrors.UndefinedColumn, pgerrors.InvalidSchemaName) as e:
        raise ConfigError(f"{action}: the schema is not migrated ({e})") from e
    except (psycopg.DataError, psycopg.IntegrityError) as e:
        raise PoisonError(f"{action}: Postgres refused the data: {e}") from e
    except (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        pgerrors.TransactionRollback,
        pgerrors.AdminShutdown,
        pgerrors.CannotConnectNow,
    ) as e:
        raise RetryableError(f"{action}: Postgres unavailable: {e}") from e


class Store:
    """A Postgres connection bound to one projection schema; reconnects on demand.

    Not thread-safe: one materializer loop owns it.
    """

    def __init__(self, settings: Settings, *, schema: str | None = None) -> None:
        self._url = settings.database_url.get_secret_value()
        self.schema = validate_schema_name(schema or settings.db_schema)
        self._conn: Conn | None = None

    def _connection(self) -> Conn:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        with translate_errors("connect"):
            conn: Conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=3,
                application_name="convsync-materializer",
            )
            try:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                conn.execute(st.CREATE_SCRATCH)
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        # After any failure the session state (open transaction, broken socket) is
        # unknown: start the next attempt on a fresh connection.
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ping(self) -> None:
        """Raise :class:`RetryableError` unless Postgres answers."""
        try:
            with translate_errors("ping"):
                conn = self._connection()
                conn.execute("SELECT 1")
        except BaseException:
            self._drop()
            raise

    def load_offsets(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Return the stored next offset of each partition that has one.

        Raises :class:`RetryableError` when Postgres is unreachable.
        """
        try:
            with translate_errors("load offsets"):
                conn = self._connection()
                rows = conn.execute(st.LOAD_OFFSETS, (group, topic, list(partitions))).fetchall()
        except BaseException:
            self._drop()
            raise
        return {int(p): int(n) for p, n in rows}  # type: ignore[call-overload]

    def write_batch(
        self,
        *,
        group: str,
        topic: str,
        rows: Sequence[StageRow],
        next_offsets: Mapping[int, int],
    ) -> BatchResult:
        """Apply one batch in one transaction and return what it did.

        ``next_offsets`` maps every partition of the batch (poison records included) to
        the offset after its last record. Raises RetryableError (nothing was applied or
        the outcome is unknown: retrying the same batch is safe), PoisonError (some row
        is unacceptable) or ConfigError.
        """
        parts = sorted(next_offsets)
        offsets = [next_offsets[p] for p in parts]
        try:
            with translate_errors("write batch"):
                conn = self._connection()
                # Round trips cost more than the statements of a small batch on a busy
                # machine: BEGIN, the COPY, then everything else as one pipeline whose
                # last statement is the COMMIT (one round trip instead of seven).
                conn.execute(st.BEGIN)
                if rows:
                    # 1. COPY the batch into the session's staging table (a temp table:
                    #    no lock needed yet).
                    seen: set[object] = set()
                    with conn.cursor() as cur, cur.copy(st.COPY_STAGE) as copy:
                        for row in rows:
                            # first_copy: the first row of an event id in the batch.
                            event_id = row[STAGE_EVENT_ID]
                            copy.write_row((*row, event_id not in seen))
                            seen.add(event_id)
                analyze = len(rows) >= st.ANALYZE_MIN_ROWS
                with conn.cursor() as insert, conn.cursor() as fold:
                    with conn.pipeline():
                        # 2. Lock the batch's partitions: one writer per partition at a time,
                        #    before anything shared is read or written.
                        conn.execute(st.LOCK_PARTITIONS, (topic, parts))
                        if rows:
                            if analyze:
                                conn.execute(st.ANALYZE_STAGE)
                            # 3. Insert the events not stored yet; the new ones go to fresh.
                            insert.execute(st.INSERT_EVENTS)
                            if analyze:
                                conn.execute(st.ANALYZE_FRESH)
                            # 4. Fold only the new events (and thread ids of all copies)
                            #    into conversations; unchanged rows are not touched.
                            fold.execute(st.FOLD_CONVERSATIONS)
                        # 5. Move the resume cursor of every partition in the batch.
                        conn.execute(st.UPSERT_OFFSETS, (group, topic, parts, offsets))
                        # 6. Commit rows and offsets together (or neither: any error above
                        #    aborts the rest of the pipeline, COMMIT included).
                        conn.execute(st.COMMIT)
                    inserted = max(insert.rowcount, 0) if rows else 0
                    changed = max(fold.rowcount, 0) if rows else 0
        except BaseException:
            # The connection is dropped, which rolls back whatever was not committed.
            self._drop()
            raise
        return BatchResult(staged=len(rows), inserted=inserted, conversations_changed=changed)

    def close(self) -> None:
        """Close the connection."""
        self._drop()
