"""The Postgres side of the materializer: one transaction per batch (or per part of a
batch, over several connections), offsets included."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from consumers.materializer import statements as st
from consumers.materializer.connections import (
    CONNECT_TIMEOUT,
    Conn,
    make_pool,
    translate_errors,
)
from consumers.materializer.folding import (
    copy_row,
    fold_batch,
    shard_batch,
    stored_rows,
)
from consumers.materializer.links import guest_links, link_params
from consumers.materializer.rows import STAGE_COLUMNS, StageRow
from schemas.migrate import validate_schema_name

log = logging.getLogger(__name__)

_EVENT_ID: Final = STAGE_COLUMNS.index("event_id")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did."""

    staged: int
    inserted: int
    conversations_changed: int
    upgraded: int = 0  # stored rows that copies of the batch changed


class _Session:
    """One pooled Postgres connection, held while it works; given back after a failure."""

    def __init__(self, pool: ConnectionPool[Conn], schema: str) -> None:
        self._pool = pool
        self.schema = schema
        self._conn: Conn | None = None

    def _connection(self) -> Conn:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        with translate_errors("connect"):
            # PoolTimeout is an OperationalError: retryable.
            self._conn = self._pool.getconn(timeout=CONNECT_TIMEOUT)
        return self._conn

    def _drop(self) -> None:
        # After any failure the session state (open transaction, broken socket) is
        # unknown: the connection is closed and given back, and the pool replaces it.
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
            self._pool.putconn(conn)

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
        """Apply one batch in one transaction (see Store.write_batch)."""
        parts = sorted(next_offsets)
        offsets = [next_offsets[p] for p in parts]
        try:
            with translate_errors("write batch"):
                conn = self._connection()
                # Round trips cost more than the statements of a small batch on a busy
                # machine: BEGIN + locks + the lookup as one pipeline, the COPYs, then
                # the rest as one pipeline whose last statement is the COMMIT.
                with conn.cursor() as lookup:
                    with conn.pipeline():
                        conn.execute(st.BEGIN)
                        # 1. Lock the batch's partitions: one writer per partition at a
                        #    time, before anything shared is read or written.
                        conn.execute(st.LOCK_PARTITIONS, (topic, parts))
                        # 2. Which events are stored already (redeliveries, replays).
                        #    Planned at every run, like the fold below: psycopg prepares
                        #    a statement on its 5th run and Postgres then keeps one plan
                        #    while the tables grow. Prepared while `events` was small,
                        #    the lookup kept a sequential scan that split the ids again
                        #    per stored row (170 ms per 150-event batch at 6,000 stored
                        #    events, growing; 25 ms unprepared).
                        if rows:
                            ids = ",".join([r[_EVENT_ID] for r in rows])
                            lookup.execute(st.EXISTING_EVENTS, (ids,), prepare=False)
                    stored = stored_rows(lookup.fetchall()) if rows else {}
                folded = fold_batch(rows, stored)
                links = guest_links(rows)
                new, deltas = folded.new, folded.deltas
                with conn.cursor() as cur:
                    if new:
                        # 3. The new events straight into `events` (the merge of the
                        #    batch's copies of each).
                        with cur.copy(st.COPY_EVENTS) as copy:
                            copy.set_types(st.EVENT_COPY_TYPES)
                            for row in new:
                                copy.write_row(copy_row(row))
                    if folded.upgrades:
                        # 3b. Stored rows merged with the batch's copies of them (rare:
                        #     the webhook's copy of a message the crawler stored first).
                        #     Pipelined, never prepared: a kept plan is what the
                        #     lookup above avoids too.
                        with conn.pipeline():
                            for key, up in folded.upgrades.items():
                                cur.execute(st.UPDATE_EVENT, up.params(key), prepare=False)
                    if deltas:
                        # 4. One row per conversation: what the batch adds to it.
                        with cur.copy(st.COPY_TOUCHED) as copy:
                            copy.set_types(st.TOUCHED_COPY_TYPES)
                            for (page_id, psid), d in deltas.items():
                                copy.write_row(
                                    (page_id, psid, d.thread_id, d.n_msg, d.first_ms,
                                     d.last_ms, d.in_ms, d.out_ms, d.read_ms, d.deliv_ms,
                                     d.last_event, d.recheck, d.platform, d.last_text,
                                     d.last_mid)
                                )  # fmt: skip
                with conn.cursor() as fold:
                    with conn.pipeline():
                        if deltas:
                            if len(deltas) >= st.ANALYZE_MIN_ROWS:
                                conn.execute(st.ANALYZE_TOUCHED)
                            # 5. Fold the deltas into conversations; unchanged rows are
                            #    not touched.
                            fold.execute(st.FOLD_CONVERSATIONS, prepare=False)
                        if links:
                            # 5b. Guests' user_refs linked to the PSIDs Meta revealed.
                            conn.execute(st.UPSERT_USER_REFS, link_params(links))
                        # 6. Move the resume cursor of every partition in the batch.
                        conn.execute(st.UPSERT_OFFSETS, (group, topic, parts, offsets))
                        # 7. Commit rows and offsets together (or neither: any error
                        #    above aborts the rest of the pipeline, COMMIT included).
                        conn.execute(st.COMMIT)
                    # Read before the cursor closes: closing resets rowcount to -1 (every
                    # batch would report 0 conversations changed).
                    changed = max(fold.rowcount, 0) if deltas else 0
        except BaseException:
            # The connection is dropped, which rolls back whatever was not committed.
            self._drop()
            raise
        return BatchResult(
            staged=len(rows),
            inserted=len(new),
            conversations_changed=changed,
            upgraded=len(folded.upgrades),
        )

    def close(self) -> None:
        """Give the connection back to the pool."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool.putconn(conn)


class Store:
    """Writes batches into one projection schema over ``writers`` connections.

    A batch is split by partition (:func:`shard_batch`) and each part commits in its own
    transaction, concurrently: the partitions of a page-keyed topic hold disjoint
    conversations, so the parts never touch the same row, and each transaction moves
    only its own partitions' offsets. A failed part raises after the others finished;
    the parts that committed are no-ops when the batch is retried (their events are
    stored and their offsets moved). Not thread-safe: one materializer loop owns it.
    """

    def __init__(self, conninfo: SecretStr, schema: str, *, writers: int = 1) -> None:
        """Open ``writers`` connections (in the background) to the database of the libpq
        connection string ``conninfo``, writing into the migrated ``schema``."""
        if writers < 1:
            raise ValueError("writers must be >= 1")
        self.schema = validate_schema_name(schema)
        self._connections = make_pool(conninfo.get_secret_value(), self.schema, writers)
        # Connecting goes on in the background: an outage at start is retried like any.
        self._connections.open(wait=False)
        self._sessions = [_Session(self._connections, self.schema) for _ in range(writers)]
        self._pool = (
            ThreadPoolExecutor(max_workers=writers - 1, thread_name_prefix="materializer-shard")
            if writers > 1
            else None
        )

    def ping(self) -> None:
        """Raise :class:`RetryableError` unless Postgres answers."""
        self._sessions[0].ping()

    def load_offsets(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Return the stored next offset of each partition that has one.

        Raises :class:`RetryableError` when Postgres is unreachable.
        """
        return self._sessions[0].load_offsets(group, topic, partitions)

    def write_batch(
        self,
        *,
        group: str,
        topic: str,
        rows: Sequence[StageRow],
        next_offsets: Mapping[int, int],
    ) -> BatchResult:
        """Apply one batch and return what it did.

        ``next_offsets`` maps every partition of the batch (poison records included) to
        the offset after its last record. Raises RetryableError (nothing was applied or
        the outcome is unknown: retrying the same batch is safe), PoisonError (some row
        is unacceptable) or ConfigError.
        """
        first = self._sessions[0]
        if self._pool is None or len(next_offsets) < 2:
            return first.write_batch(group=group, topic=topic, rows=rows, next_offsets=next_offsets)
        shards = shard_batch(rows, next_offsets, len(self._sessions))
        futures = [
            self._pool.submit(
                session.write_batch,
                group=group,
                topic=topic,
                rows=shard.rows,
                next_offsets=shard.next_offsets,
            )
            for session, shard in zip(self._sessions[1:], shards[1:], strict=False)
        ]
        done: list[BatchResult] = []
        failed: list[Exception] = []
        try:
            done.append(
                first.write_batch(
                    group=group,
                    topic=topic,
                    rows=shards[0].rows,
                    next_offsets=shards[0].next_offsets,
                )
            )
        except Exception as e:  # noqa: BLE001 - raised below, after the other parts finished
            failed.append(e)
        for future in futures:
            try:
                done.append(future.result())
            except Exception as e:  # noqa: BLE001 - raised below
                failed.append(e)
        if failed:
            raise failed[0]
        return BatchResult(
            staged=sum(r.staged for r in done),
            inserted=sum(r.inserted for r in done),
            conversations_changed=sum(r.conversations_changed for r in done),
            upgraded=sum(r.upgraded for r in done),
        )

    def close(self) -> None:
        """Close the connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for session in self._sessions:
            session.close()
        self._connections.close(timeout=CONNECT_TIMEOUT)
