"""A batch's rows folded in memory before they are written: the stored copies merged
with the batch's copies, the conversations' deltas, and the split of a batch by partition
over the writer connections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from consumers.materializer import statements as st
from consumers.materializer.rows import STAGE_COLUMNS, StageRow
from schemas.copies import Merged, RestRank, rest_rank

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
# Postgres's own epoch (2000-01-01 UTC) in ms since the Unix epoch.
_PG_EPOCH_MS: Final = 946_684_800_000
# What a jsonb value starts with in binary COPY: the version of its format.
_JSONB_V1: Final = "\x01"


def as_timestamp(ms: int | None) -> datetime | None:
    """The ``timestamptz`` value of ms since the epoch, exactly (integer arithmetic: a
    float division could round a millisecond)."""
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def pg_time(ms: int | None) -> int | None:
    """A ``timestamptz`` in binary COPY's format: microseconds since 2000-01-01 UTC."""
    return None if ms is None else (ms - _PG_EPOCH_MS) * 1000


def copy_row(row: StageRow) -> tuple[object, ...]:
    """The ``COPY_EVENTS`` values of a staging row, for ``EVENT_COPY_TYPES``' dumpers."""
    (_, event_id, page_id, psid, kind, mid, occurred_ms, direction, text, watermark_ms,
     thread_id, source, attrs, payload, topic, partition, offset, num_edit,
     digest, platform, _user_ref) = row  # fmt: skip
    return (
        event_id, page_id, psid, kind, mid, pg_time(occurred_ms), direction, text,
        pg_time(watermark_ms), thread_id, source, _JSONB_V1 + attrs, _JSONB_V1 + payload,
        topic, partition, offset, num_edit, digest, platform,
    )  # fmt: skip


def event_row(row: StageRow) -> tuple[object, ...]:
    """The ``EVENT_COLUMNS`` values of a staging row as query parameters (times as
    datetimes, JSON as text)."""
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
    mid: str | None = None  # of the copy whose other fields the row keeps


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
    for (event_id, psid, kind, ms, text, direction, thread_id, num_edit, source, digest,
         mid) in records:  # fmt: skip
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
            cast(str | None, mid),
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
    # The last message copy by (occurred_at, event id), and (set by fold_batch once the
    # batch is folded) the text and mid its row has after this batch.
    last_event: str | None = None
    last_mid: str | None = None
    last_text: str | None = None
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
    for (_, psid), delta in deltas.items():
        if delta.last_event is not None:
            # The row of the batch's last message as this batch leaves it: new, upgraded,
            # or stored unchanged (every row of the batch is one of them).
            key = (delta.last_event, psid)
            if key in new:
                delta.last_text, delta.last_mid = new[key][_TEXT], new[key][_MID]
            else:
                was, up = stored[key], upgrades.get(key)
                delta.last_text = was.merged.text if up is None else up.merged.text
                rest = None if up is None else up.rest
                delta.last_mid = was.mid if rest is None else rest[_MID]
    return FoldedBatch(list(new.values()), upgrades, deltas)


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
