"""streams/held.py: after a rebalance the tables let go of the partitions moved away.

Real faust tables and memory stores, in process; the rebalance's end is faust's own
``on_recovery_completed`` with the partitions that stayed active. The two-worker test in
test_app.py shows the same through real workers.
"""

from __future__ import annotations

import random
import weakref
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP

from convsync.settings import Settings
from streams import held
from streams.change import MemorySide, step
from streams.codec import encode_state
from streams.digests import DigestIndex
from streams.folder import Folder
from streams.side import side_key
from streams.stats import PageStats
from tests.streams.events import conversation_events

pytestmark = pytest.mark.asyncio


class _Message:
    def __init__(self, partition: int) -> None:
        self.partition = partition


class _Event:
    """What the key hooks read of faust's current event: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = _Message(partition)


def _folder(tmp_path: Path) -> Folder:
    settings = Settings(topic_prefix="held", partitions=2)
    app = faust.App("held.streams", store="memory://", datadir=str(tmp_path))
    return Folder(app, settings, PageStats(app, partitions=2))


async def _completed(table: Any, *partitions: int) -> None:
    active = {TP(table.changelog_topic.get_topic_name(), p) for p in partitions}
    await table.on_recovery_completed(active, set())


async def test_written_keys_of_a_partition_moved_away_are_dropped(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    evs = conversation_events(random.Random(2), pages=2, users=3, messages=20)
    by_key: dict[str, tuple[int, Any]] = {}
    side = MemorySide()
    for ev in evs:
        key = f"{ev.page_id}:{ev.psid}"
        before = by_key.get(key, (0, None))[1]
        by_key[key] = (int(ev.page_id[1:]) % 2, step(before, ev, side).state)
    # What Folder._store does: states and side-table values written to the stores
    # directly, partitions told.
    for key, (partition, state) in by_key.items():
        value = encode_state(state)
        folder.states.data[key] = value
        folder._remember(key, partition)
        folder._decoded.put(key, value, state)
        folder.side.chunks[side_key(key, 0)] = (partition, b"\0" * 8)
        folder.side.pending_edits[side_key(key, "m")] = (partition, (1, "ev1_x", "t", None))
        folder.side.indexes.put(key, DigestIndex())
    list(folder.side.drain_before())
    list(folder.side.drain_after())
    # The statistics: writes through the table, in an event (their hook only queues the
    # changelog records; test_app.py's two-worker test covers both guarantees end to end).
    for partition in (0, 1):
        event = _Event(partition)  # held: faust keeps only a weak reference
        token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
        try:
            folder.stats.needs_reply[f"p{partition}"] += 1
        finally:
            _current_event.reset(token)

    await _completed(folder.side.digests, 0)
    await _completed(folder.side.edits, 0)
    await _completed(folder.states, 0)
    await _completed(folder.stats.needs_reply, 0)

    kept = {key for key, (partition, _) in by_key.items() if partition == 0}
    assert kept and kept != set(by_key)
    assert set(folder.states.data) == kept
    assert set(folder._decoded._cache.snapshot()) == kept
    assert set(folder.side.indexes.snapshot()) == kept
    assert set(folder.side.digests.data) == {side_key(k, 0) for k in kept}
    assert set(folder.side.edits.data) == {side_key(k, "m") for k in kept}
    assert set(folder.stats.needs_reply.data) == {"p0"}


async def test_the_partition_map_does_not_keep_keys_the_store_dropped(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    table = folder.stats.needs_reply
    event = _Event(0)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        for i in range(5000):
            table[f"p{i}"] += 1
            if i >= 10:
                # What faust's window expiry does: pop from the store, past every hook.
                table.data.pop(f"p{i - 10}", None)
    finally:
        _current_event.reset(token)
    known = table.data._key_partition
    assert len(table.data) == 10
    assert set(known) >= set(table.data)
    assert len(known) <= 2 * 10 + held.SLACK + 1
