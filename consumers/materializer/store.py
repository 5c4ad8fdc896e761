"""The Postgres side of the materializer: one transaction per batch (or per part of a
batch, over several connections), offsets included."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from psycopg_pool import ConnectionPool

from consumers.materializer import statements as st
from consumers.materializer.connections import (
    CONNECT_TIMEOUT,
    Conn,
    make_pool,
    translate_errors,
)
from consumers.materializer.links import guest_links, link_params
from consumers.materializer.rows import STAGE_COLUMNS, StageRow
from convsync.settings import Settings
from schemas.copies import Merged, RestRank, rest_rank
from schemas.migrate import validate_schema_name

log = logging.getLogger(__name__)

_COL = {name: i for i, name in enumerate(STAGE_COLUMNS)}
_EVENT_ID, _PAGE_ID, _PSID, _THREAD_ID = (
    _COL["event_id"],
    _COL["page_id"],
    _COL["psid"],
    _COL["thread_id"],
)
_OCCURRED, _WATERMARK = _COL["occurred_ms"], _COL["watermark_ms"]
_KIND, _MID, _DIRECTION = _COL["kind"], _COL["mid"], _COL["direction"]
_SEQ, _PARTITION = _COL["seq"], _COL["partition"]
_TEXT, _SOURCE = _COL["text"], _COL["source"]
_NUM_EDIT, _DIGEST = _COL["num_edit"], _COL["copy_digest"]
_PLATFORM = _COL["platform"]
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def as_timestamp(ms: int | None) -> datetime | None:
    """The ``timestamptz`` value of ms since the epoch, exactly (integer arithmetic: a
    float division could round a millisecond)."""
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def event_row(row: StageRow) -> tuple[object, ...]:
    """The ``COPY_EVENTS`` columns of a staging row."""
    (_, event_id, page_id, psid, kind, mid, occurred_ms, direction, text, watermark_ms,
     thread_id, source, attrs, payload, topic, partition, offset, num_edit,
     digest, platform, _user_ref) = row  # fmt: skip
    return (
        event_id, page_id, psid, kind, mid, as_timestamp(occurred_ms), direction, text,
        as_timestamp(watermark_ms), thread_id, source, attrs, payload, topic, partition, offset,
        num_edit, digest, platform,
    )  # fmt: skip


RowKey = tuple[str, str]  # (event_id, psid): one events row


@dataclass(frozen=True, slots=True)
class Stored:
    """What ``EXISTING_EVENTS`` tells of a stored row: its merged fields and the rank of
    the copy whose other fields it keeps (schemas.copies)."""

    kind: str
    merged: Merged
    rank: RestRank


def merged_of(row: StageRow) -> Merged:
    """The :class:`schemas.copies.Merged` fields of a staging row."""
    return Merged(row[_OCCURRED], row[_TEXT], row[_DIRECTION], row[_THREAD_ID], row[_NUM_EDIT])


def row_rank(row: StageRow) -> RestRank:
    """The :func:`schemas.copies.rest_rank` of a staging row."""
    return rest_rank(row[_SOURCE], row[_DIGEST])


def with_merged(row: StageRow, m: Merged) -> StageRow:
    """``row`` (the copy whose other fields win) with the merged fields ``m``."""
    out = list(row)
    out[_OCCURRED], out[_TEXT], out[_DIRECTION] = m.occurred_at, m.text, m.direction
    out[_THREAD_ID], out[_NUM_EDIT] = m.thread_id, m.num_edit
    return tuple(out)


def stored_rows(records: Iterable[Sequence[object]]) -> dict[RowKey, Stored]:
    """The ``EXISTING_EVENTS`` result as :func:`fold_batch` takes it."""
    out: dict[RowKey, Stored] = {}
    for event_id, psid, kind, ms, text, direction, thread_id, num_edit, source, digest in records:
        out[(str(event_id), str(psid))] = Stored(
            str(kind),
            Merged(
                int(ms),  # type: ignore[call-overload]
                cast(str | None, text),
                cast(str | None, direction),
                cast(str | None, thread_id),
                None if num_edit is None else int(num_edit),  # type: ignore[call-overload]
            ),
            rest_rank(str(source), cast(str | None, digest)),
        )
    return out


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A stored row merged with the batch's copies of it."""

    merged: Merged
    rank: RestRank
    rest: StageRow | None  # the batch's copy that outranks the stored one, if any

    def params(self, key: RowKey) -> dict[str, object]:
        """The ``UPDATE_EVENT`` parameters."""
        m, rest = self.merged, self.rest
        out: dict[str, object] = dict.fromkeys(st.EVENT_COLUMNS)
        if rest is not None:
            out.update(zip(st.EVENT_COLUMNS, event_row(rest), strict=True))
        out.update(
            event_id=key[0],
            psid=key[1],
            occurred_at=as_timestamp(m.occurred_at),
            direction=m.direction,
            text=m.text,
            thread_id=m.thread_id,
            num_edit=m.num_edit,
            rest=rest is not None,
        )
        return out


@dataclass(slots=True)
class ConversationDelta:
    """What one batch adds to one conversation, aggregated the way FOLD_CONVERSATIONS
    merges it (times in ms): counts of its new events, times of every message copy, and
    the greatest non-empty thread id of any copy (code point order, which is SQL's "C"
    order)."""

    thread_id: str | None = None
    n_msg: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    in_ms: int | None = None
    out_ms: int | None = None
    read_ms: int | None = None
    deliv_ms: int | None = None
    # The last message copy by (occurred_at, event id).
    last_event: str | None = None
    # A new edit of a message (with a mid) was stored, or a stored message was replaced
    # by a better copy: the last message's text may change.
    recheck: bool = False
    # The least platform of its copies (FOLD_CONVERSATIONS keeps the least).
    platform: str = "messenger"

    def add(self, row: StageRow, *, again: bool = False) -> None:
        """Add one event; ``again``: a copy of its id is stored or already added (then
        only a message copy adds anything: its times, not its count)."""
        if row[_PLATFORM] < self.platform:
            self.platform = row[_PLATFORM]
        kind = row[_KIND]
        if kind == "message":
            at: int = row[_OCCURRED]
            if not again:
                self.n_msg += 1
            if self.first_ms is None or at < self.first_ms:
                self.first_ms = at
            if (
                self.last_ms is None
                or at > self.last_ms
                or (at == self.last_ms and row[_EVENT_ID] > self.last_event)
            ):
                self.last_ms, self.last_event = at, row[_EVENT_ID]
            direction = row[_DIRECTION]
            if direction == "inbound":
                if self.in_ms is None or at > self.in_ms:
                    self.in_ms = at
            elif direction == "outbound" and (self.out_ms is None or at > self.out_ms):
                self.out_ms = at
        elif again:
            return
        elif kind == "read":
            mark = row[_WATERMARK]
            if mark is not None and (self.read_ms is None or mark > self.read_ms):
                self.read_ms = mark
        elif kind == "delivery":
            mark = row[_WATERMARK]
            if mark is not None and (self.deliv_ms is None or mark > self.deliv_ms):
                self.deliv_ms = mark
        elif kind == "edit" and row[_MID]:
            self.recheck = True


@dataclass(slots=True)
class FoldedBatch:
    """What :func:`fold_batch` makes of a batch."""

    # The rows to insert: the merge of the batch's copies of each (event id,
    # conversation) not stored, in the order of their first copies.
    new: list[StageRow]
    # Stored rows the batch's copies change, by (event id, psid).
    upgrades: dict[RowKey, Upgrade]
    deltas: dict[tuple[str, str], ConversationDelta]


def fold_batch(rows: Sequence[StageRow], stored: Mapping[RowKey, Stored]) -> FoldedBatch:
    """Fold a batch against ``stored``: the batch's (event id, psid) rows already in
    ``events``. Copies merge as :mod:`schemas.copies` says, so the rows do not depend on
    the order or batching of the copies."""
    new: dict[RowKey, StageRow] = {}
    upgrades: dict[RowKey, Upgrade] = {}
    deltas: dict[tuple[str, str], ConversationDelta] = {}
    for row in rows:
        key = (row[_PAGE_ID], row[_PSID])
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = ConversationDelta()
        thread = row[_THREAD_ID]
        if thread and (delta.thread_id is None or thread > delta.thread_id):
            delta.thread_id = thread
        row_key = (row[_EVENT_ID], row[_PSID])
        kind = row[_KIND]
        old = stored.get(row_key)
        if old is not None:
            delta.add(row, again=True)
            up = upgrades.get(row_key)
            merged = (old.merged if up is None else up.merged).merge(merged_of(row), kind)
            rank, rest = (old.rank, None) if up is None else (up.rank, up.rest)
            if row_rank(row) > rank:
                rank, rest = row_rank(row), row
            if merged != old.merged or rest is not None:
                upgrades[row_key] = Upgrade(merged, rank, rest)
                if kind in ("message", "edit") and (
                    merged.text != old.merged.text or merged.num_edit != old.merged.num_edit
                ):
                    # The last message's text may change (its row or its winning edit).
                    delta.recheck = True
        elif row_key in new:
            delta.add(row, again=True)
            current = new[row_key]
            merged = merged_of(current).merge(merged_of(row), kind)
            winner = row if row_rank(row) > row_rank(current) else current
            new[row_key] = with_merged(winner, merged)
        else:
            new[row_key] = row
            delta.add(row)
    return FoldedBatch(list(new.values()), upgrades, deltas)


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
                            for row in new:
                                copy.write_row(event_row(row))
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
                            for (page_id, psid), d in deltas.items():
                                copy.write_row(
                                    (page_id, psid, d.thread_id, d.n_msg, d.first_ms,
                                     d.last_ms, d.in_ms, d.out_ms, d.read_ms, d.deliv_ms,
                                     d.last_event, d.recheck, d.platform)
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
                    # Read before the cursor closes: closing resets rowcount to -1 (so
                    # until 2026-11-29 every batch reported 0 conversations changed).
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


@dataclass(frozen=True, slots=True)
class Shard:
    """The part of a batch one connection writes: whole partitions only."""

    rows: list[StageRow]
    next_offsets: dict[int, int]


def shard_batch(
    rows: Sequence[StageRow], next_offsets: Mapping[int, int], shards: int
) -> list[Shard]:
    """Split a batch into at most ``shards`` parts of whole partitions, balanced by row
    count; rows keep their batch order within a part. Every partition of
    ``next_offsets`` (poison-only ones included) is in exactly one part."""
    by_partition: dict[int, list[StageRow]] = {p: [] for p in next_offsets}
    for row in rows:
        by_partition[row[_PARTITION]].append(row)
    parts: list[tuple[list[StageRow], dict[int, int]]] = [([], {}) for _ in range(shards)]
    for p in sorted(by_partition, key=lambda p: (-len(by_partition[p]), p)):
        target = min(parts, key=lambda part: len(part[0]))
        target[0].extend(by_partition[p])
        target[1][p] = next_offsets[p]
    out = [Shard(part_rows, offsets) for part_rows, offsets in parts if offsets]
    for shard in out:
        # Batch order within the shard (of copies that rank equal, the first one wins).
        shard.rows.sort(key=lambda row: row[_SEQ])
    return out


class Store:
    """Writes batches into one projection schema over ``writers`` connections.

    A batch is split by partition (:func:`shard_batch`) and each part commits in its own
    transaction, concurrently: the partitions of a page-keyed topic hold disjoint
    conversations, so the parts never touch the same row, and each transaction moves
    only its own partitions' offsets. A failed part raises after the others finished;
    the parts that committed are no-ops when the batch is retried (their events are
    stored and their offsets moved). Not thread-safe: one materializer loop owns it.
    """

    def __init__(self, settings: Settings, *, schema: str | None = None, writers: int = 1) -> None:
        if writers < 1:
            raise ValueError("writers must be >= 1")
        self.schema = validate_schema_name(schema or settings.db_schema)
        url = settings.database_url.get_secret_value()
        self._connections = make_pool(url, self.schema, writers)
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
