"""streams/side.py: the worker's side tables and caches stay bounded and exact.

Real faust tables and memory stores, in process (no broker): what ``Folder.process`` and
``Folder._store`` do with them, minus the sends.
"""

from __future__ import annotations

import random
from pathlib import Path

import faust
import pytest

from schemas.envelope import Envelope
from streams import side as side_module
from streams.change import StreamState, step
from streams.codec import encode_state
from streams.side import LRU, DecodedStates, TableSide


def test_the_lru_forgets_by_weight() -> None:
    lru: LRU[str, int] = LRU(10)
    for i in range(5):
        lru.put(f"k{i}", i, weight=3)
    assert lru.weight <= 10 and lru.snapshot() == ["k2", "k3", "k4"]
    assert lru.get("k2") == 2  # used: now the most recent
    lru.put("k5", 5, weight=3)
    assert lru.snapshot() == ["k4", "k2", "k5"] and lru.get("k3") is None
    # One entry heavier than the limit is still kept (until the next one).
    lru.put("big", 0, weight=100)
    assert lru.snapshot() == ["big"]


def _message(psid: str, i: int) -> Envelope:
    return Envelope.build(
        kind="message", page_id="p", psid=psid, mid=f"m_{psid}_{i}", occurred_at=i,
        source="webhook", direction="inbound", text=str(i), raw={},
    )  # fmt: skip


def test_evicted_indexes_and_states_are_rebuilt_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Caches far smaller than the data: three conversations of 700 messages (two sealed
    # chunks each) with room for one index and two decoded states. Every re-delivery,
    # folded after the caches forgot, is still a duplicate; every count exact.
    monkeypatch.setattr(side_module, "INDEX_DIGESTS", 600)
    monkeypatch.setattr(side_module, "DECODED_STATES", 2)
    app = faust.App("side.streams", store="memory://", datadir=str(tmp_path))
    states = app.Table("conversations", default=None, partitions=1, key_type=str, value_type=bytes)
    side = TableSide(app, partitions=1)
    decoded = DecodedStates(states)
    events = [_message(f"u{c}", i) for i in range(700) for c in range(3)]
    again = list(events)
    random.Random(3).shuffle(again)
    for batch in (events, again):
        for start in range(0, len(batch), 100):
            pending: dict[str, StreamState] = {}
            for ev in batch[start : start + 100]:
                key = f"p:{ev.psid}"
                before = pending.get(key) or side.load(decoded, key, 0)[0]
                result = step(before, ev, side)
                side.record(result, 0)
                if batch is again:
                    assert result.duplicate, ev.mid
                pending[key] = result.state
            # What Folder._store does with the stores (the sends left out).
            list(side.drain_before())
            for key, state in pending.items():
                value = encode_state(state)
                states.data[key] = value
                decoded.put(key, value, state)
            list(side.drain_after())
            assert (side.indexes.weight <= 600 or len(side.indexes) == 1) and len(decoded) <= 2
    for c in range(3):
        loaded = decoded.load(f"p:u{c}")
        assert loaded is not None
        assert loaded.state.conversation.message_count == 700
        assert loaded.state.sealed == 2
