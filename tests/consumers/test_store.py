"""Store: the direct COPY path, the Python side of the fold and the parallel writers."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from consumers.materializer import statements
from consumers.materializer.folding import RowKey, Stored, fold_batch, shard_batch
from consumers.materializer.rows import Position, StageRow, stage_row
from consumers.materializer.store import Store
from convsync.errors import PoisonError, RetryableError
from schemas.copies import merged_rows, rest_rank
from schemas.envelope import Envelope
from schemas.kinds import Direction
from tests.consumers.helpers import (
    conversations,
    crawler_copy,
    expected,
    random_events,
    scalar,
)
from tests.fixtures.postgres import MakeSchema

TOPIC = "store.events"


def _rows(events: list[Envelope], partitions: int) -> tuple[list[StageRow], dict[int, int]]:
    rows: list[StageRow] = []
    offsets: dict[int, int] = {}
    for seq, ev in enumerate(events):
        part = sum(ev.page_id.encode()) % partitions
        offset = offsets.get(part, 0)
        rows.append(stage_row(ev, Position(TOPIC, part, offset), seq))
        offsets[part] = offset + 1
    return rows, offsets


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 80),
    partitions=st.integers(1, 6),
    shards=st.integers(1, 4),
)
def test_shard_batch_keeps_every_partition_whole_and_in_order(
    seed: int, n: int, partitions: int, shards: int
) -> None:
    rng = random.Random(seed)
    rows, offsets = _rows(random_events(rng, pages=6, users=3, n=n), partitions)
    # A partition with poison only: an offset to move and no row.
    offsets[partitions] = 7
    parts = shard_batch(rows, offsets, shards)
    assert 1 <= len(parts) <= shards
    seen: dict[int, int] = {}
    for part in parts:
        assert part.next_offsets, "an empty part would be a transaction for nothing"
        for p, n_next in part.next_offsets.items():
            assert p not in seen, f"partition {p} in two parts"
            seen[p] = n_next
        assert {row[15] for row in part.rows} <= set(part.next_offsets)
        assert [row[0] for row in part.rows] == sorted(row[0] for row in part.rows)
    assert seen == offsets
    assert sorted(row[0] for part in parts for row in part.rows) == [row[0] for row in rows]


def _stored(*copies: Envelope) -> dict[RowKey, Stored]:
    """What EXISTING_EVENTS returns once ``copies`` are stored."""
    return {
        key: Stored(row.copy.kind, row.merged, rest_rank(row.copy.source, row.digest), row.copy.mid)
        for key, row in merged_rows(copies).items()
    }


def test_fold_batch_merges_the_copies_and_reads_every_copys_times() -> None:
    def msg(mid: str, at: int, direction: Direction = "inbound") -> Envelope:
        return Envelope.build(
            kind="message", page_id="p", psid="u", mid=mid, occurred_at=at, source="webhook",
            direction=direction, text=mid, raw={},
        )  # fmt: skip

    a, b, c = msg("a", 10_500), msg("b", 30_700), msg("c", 20_000, "outbound")
    a_bare = crawler_copy(a, bare=True)
    b_crawled = msgspec.structs.replace(crawler_copy(b, bare=False), thread_id="t_z")
    rows, _ = _rows([b_crawled, a, c, b, a_bare], 1)
    # a is stored as the crawler read it past Graph's detail window.
    folded = fold_batch(rows, _stored(a_bare))
    # b's two copies merge: the webhook's time, source and payload, the crawler's thread.
    assert [(row[1], row[6], row[10], row[11]) for row in folded.new] == [
        (b.event_id, 30_700, "t_z", "webhook"),
        (c.event_id, 20_000, None, "webhook"),
    ]
    ((key, up),) = folded.upgrades.items()
    assert key == (a.event_id, "u")
    m = up.merged
    assert (m.occurred_at, m.direction, m.text, m.thread_id) == (10_500, "inbound", "a", "t_p_u")
    assert up.rest is not None and up.rest[11] == "webhook"  # the webhook's payload wins
    d = folded.deltas["p", "u"]
    # Counts from new events only; times from every copy; thread ids of every copy.
    assert (d.n_msg, d.first_ms, d.last_ms, d.in_ms, d.out_ms) == (
        2,
        10_000,
        30_700,
        30_700,
        20_000,
    )
    assert (d.last_event, d.thread_id, d.recheck) == (b.event_id, "t_z", True)
    # The last message's text and mid as the batch leaves its row (a new row here): the
    # fold reads only its edits.
    assert (d.last_text, d.last_mid) == ("b", "b")
    # Copies that add nothing to the stored rows change nothing, and the text needs no
    # second look.
    again = fold_batch(rows[:1] + rows[4:], _stored(a, a_bare, b, b_crawled))
    assert again.new == [] and again.upgrades == {}
    assert (again.deltas["p", "u"].n_msg, again.deltas["p", "u"].recheck) == (0, False)
    # A stored last message: its stored text and mid.
    assert (again.deltas["p", "u"].last_text, again.deltas["p", "u"].last_mid) == ("b", "b")
    # A stored last message the batch upgrades (the crawler's bare copy, then Meta's):
    # the merged text.
    up_only = fold_batch(_rows([a], 1)[0], _stored(a_bare))
    assert (up_only.deltas["p", "u"].last_text, up_only.deltas["p", "u"].last_mid) == ("a", "a")


@pytest.mark.integration
def test_event_stored_between_lookup_and_copy_is_retryable_and_applies_nothing(
    make_schema: MakeSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_schema()
    events = random_events(random.Random(7), pages=1, users=2, n=20)
    rows, offsets = _rows(events, 1)
    store = Store(settings.database_url, settings.db_schema)
    try:
        store.write_batch(group="g", topic=TOPIC, rows=rows[:5], next_offsets={0: 5})
        before = conversations(settings)
        # Another writer (not holding the partition lock) stored rows[:5] after our lookup.
        monkeypatch.setattr(
            statements,
            "EXISTING_EVENTS",
            sql.SQL(
                "SELECT event_id, true, 0::bigint, text, direction, source, thread_id FROM events"
                " WHERE false AND event_id = ANY(string_to_array(%s, ','))"
            ),
        )
        with pytest.raises(RetryableError, match="stored concurrently"):
            store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets=offsets)
        assert conversations(settings) == before
        assert scalar(settings, "SELECT count(*) FROM {s}.events") == 5
        assert scalar(settings, "SELECT next_offset FROM {s}.consumer_offsets") == 5
        monkeypatch.undo()
        result = store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets=offsets)
    finally:
        store.close()
    assert result.inserted == len(
        {e.event_id for e in events[5:]} - {e.event_id for e in events[:5]}
    )
    assert conversations(settings) == expected(events)


@pytest.mark.integration
@pytest.mark.parametrize("writers", [1, 2])
def test_a_batch_reports_the_conversations_it_changed(
    make_schema: MakeSchema, writers: int
) -> None:
    settings = make_schema()
    events = random_events(random.Random(13), pages=3, users=6, n=150)
    rows, offsets = _rows(events, 3)
    store = Store(settings.database_url, settings.db_schema, writers=writers)
    try:
        first = store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets=offsets)
        # The same batch again (a redelivery): nothing new, no row changes.
        again = store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets=offsets)
    finally:
        store.close()
    assert first.conversations_changed == len({(e.page_id, e.psid) for e in events})
    assert first.conversations_changed == scalar(settings, "SELECT count(*) FROM {s}.conversations")
    assert (again.inserted, again.conversations_changed) == (0, 0)


@pytest.mark.integration
def test_one_part_refused_the_others_commit_and_the_retry_is_exact(
    make_schema: MakeSchema,
) -> None:
    settings = make_schema()
    events = random_events(random.Random(11), pages=4, users=5, n=200)
    rows, offsets = _rows(events, 4)
    # Postgres refuses this row (events.direction CHECK); validation cannot produce it.
    bad_at = next(i for i, row in enumerate(rows) if row[15] == 3)
    broken: list[Any] = list(rows[bad_at])
    broken[7] = "sideways"
    store = Store(settings.database_url, settings.db_schema, writers=2)
    try:
        with pytest.raises(PoisonError, match="direction"):
            store.write_batch(
                group="g",
                topic=TOPIC,
                rows=[*rows[:bad_at], tuple(broken), *rows[bad_at + 1 :]],
                next_offsets=offsets,
            )
        committed = scalar(settings, 'SELECT array_agg("partition") FROM {s}.consumer_offsets')
        assert committed and 3 not in committed, "the refused part committed nothing"
        versions = scalar(settings, "SELECT sum(version) FROM {s}.conversations")
        assert versions > 0, "the other part committed"
        # The retry (the materializer halves the batch until the bad record is alone).
        store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets=offsets)
    finally:
        store.close()
    assert conversations(settings) == expected(events)
    stored = scalar(settings, "SELECT count(*) FROM {s}.events")
    assert stored == len({e.event_id for e in events})
    # The parts that committed first were no-ops the second time: one version each.
    assert scalar(settings, "SELECT max(version) FROM {s}.conversations") == 1


@pytest.mark.integration
def test_no_plan_over_events_or_conversations_is_kept_between_batches(
    make_schema: MakeSchema,
) -> None:
    """A prepared statement keeps its plan while the tables grow: the lookup, prepared
    while `events` was small, kept scanning all of it. Many batches later, the session
    holds no prepared statement that reads `events` or `conversations`."""
    settings = make_schema()
    events = random_events(random.Random(3), pages=2, users=4, n=60)
    rows, _ = _rows(events, 1)
    store = Store(settings.database_url, settings.db_schema)
    try:
        for i in range(0, len(rows), 5):
            store.write_batch(group="g", topic=TOPIC, rows=rows[i : i + 5], next_offsets={0: i + 5})
        conn = store._sessions[0]._connection()
        prepared = [str(r[0]) for r in conn.execute("SELECT statement FROM pg_prepared_statements")]
    finally:
        store.close()
    assert prepared, "psycopg prepares the statements run this often (the test would be void)"
    kept = [
        s for s in prepared if "events" in s.replace("consumer_offsets", "") or "conversations" in s
    ]
    assert not kept, kept
