"""The side tables of the change stream in the faust app: sealed digests and edits.

:class:`TableSide` is the :class:`streams.change.Side` of the worker: it answers the
fold's look-ups from the batch's pending writes first, then from the tables' stores, and
collects the batch's writes for ``Folder._store``, which sends them (and waits for Kafka
to acknowledge them) before the conversation records that count them.

Memory is bounded apart from the tables themselves: the in-memory indexes of sealed
digests are kept for the most recently used conversations up to ``INDEX_DIGESTS``
digests in all (an evicted one is rebuilt from its chunks when needed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final, Generic, TypeVar

import faust
import orjson
from faust.serializers import codecs

from streams.change import Edit, Step, StreamState, edit_rank
from streams.codec import Decoded, decode_edit, decode_state, encode_edit
from streams.digests import DigestIndex
from streams.faust_fixes import store_put
from streams.held import Remember, track_partitions

INDEX_DIGESTS: Final = 4_000_000  # ~36 MB of in-memory digest indexes
DECODED_STATES: Final = 100_000  # conversations kept decoded (the rest decode on use)
K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A mapping that forgets its least recently used entries past a total weight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.weight = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, weight: int = 1) -> None:
        self.pop(key)
        self._items[key] = (value, weight)
        self.weight += weight
        while self.weight > self.limit and len(self._items) > 1:
            _, (_, w) = self._items.popitem(last=False)
            self.weight -= w

    def pop(self, key: K) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.weight -= item[1]

    def snapshot(self) -> list[K]:
        """Return the keys, least recently used first (a copy)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


def side_key(conversation: str, part: int | str) -> str:
    """Return the key of a conversation's sealed chunk (int) or of a message's edit (mid)."""
    return orjson.dumps([conversation, part]).decode()


Outbox = dict[int, list[tuple[bytes, bytes]]]


class TableSide:
    """Sealed digest chunks and winning edits in changelog-backed faust tables."""

    def __init__(self, app: faust.App, *, partitions: int) -> None:
        self.digests = app.Table(
            "conversation-digests", default=None, partitions=partitions, key_type=str,
            value_type=bytes,
        )  # fmt: skip
        self.edits = app.Table(
            "conversation-edits", default=None, partitions=partitions, key_type=str,
            value_type=bytes,
        )  # fmt: skip
        self._remember: dict[Any, Remember] = {
            self.digests: track_partitions(self.digests),
            self.edits: track_partitions(self.edits),
        }
        self.indexes: LRU[str, DigestIndex] = LRU(INDEX_DIGESTS)
        # The batch's writes: table key -> (partition, value). Sealed chunks and the edits
        # of old records carried over go before the conversation records, the batch's
        # edits after them (see drain_before / drain_after).
        self.chunks: dict[str, tuple[int, bytes]] = {}
        self.carried: dict[str, tuple[int, Edit]] = {}
        self.pending_edits: dict[str, tuple[int, Edit]] = {}

    # --- what the fold reads ---------------------------------------------------------

    def sealed(self, key: str, state: StreamState, value: bytes) -> bool:
        index = self.indexes.get(key)
        if index is None or index.chunks != state.sealed:
            index = DigestIndex.build(self._chunk(key, n) for n in range(state.sealed))
            self.indexes.put(key, index, max(1, index.size))
        return value in index

    def edit(self, key: str, mid: str) -> Edit | None:
        k = side_key(key, mid)
        pending = self.pending_edits.get(k) or self.carried.get(k)
        if pending is not None:
            return pending[1]
        raw = self.edits.data.get(k)
        return None if raw is None else decode_edit(raw)

    def _chunk(self, key: str, n: int) -> bytes:
        k = side_key(key, n)
        pending = self.chunks.get(k)
        if pending is not None:
            return pending[1]
        blob = self.digests.data.get(k)
        if blob is None:
            # Every record that counts a chunk was written after it: a missing one is a
            # lost or edited changelog, and folding on would count messages twice.
            raise RuntimeError(f"sealed chunk {n} of conversation {key!r} is missing")
        return bytes(blob)

    # --- what the fold writes --------------------------------------------------------

    def record(self, result: Step, partition: int) -> None:
        """Keep the side-table writes of one step (the event's ``partition``)."""
        key = result.state.key
        if result.chunk is not None:
            n = result.state.sealed - 1
            self.chunks[side_key(key, n)] = (partition, result.chunk)
            index = self.indexes.get(key)
            if index is not None and index.chunks == n:
                index.add(result.chunk)
                self.indexes.put(key, index, max(1, index.size))
            else:
                self.indexes.pop(key)
        if result.edit is not None:
            mid, edit = result.edit
            self.pending_edits[side_key(key, mid)] = (partition, edit)

    def load(
        self, states: DecodedStates, key: str, partition: int
    ) -> tuple[StreamState | None, bool]:
        """Return the stored state of ``key`` (None: never seen) and whether it was carried
        over from an old format (its side-table writes are then pending; the caller must
        write the state in this batch too)."""
        decoded = states.load(key)
        if decoded is None:
            return None, False
        if not (decoded.chunks or decoded.edits):
            return decoded.state, False
        self.carry(key, decoded, partition)
        return decoded.state, True

    def carry(self, key: str, decoded: Decoded, partition: int) -> None:
        """Keep the side-table writes that carry a record of an old format over."""
        for n, blob in enumerate(decoded.chunks):
            self.chunks[side_key(key, n)] = (partition, blob)
        for mid, edit in decoded.edits:
            # A carry-over that crashed before the record was rewritten may have been
            # followed by newer edits: the greater one stays.
            current = self.edit(key, mid)
            if current is None or edit_rank(edit) > edit_rank(current):
                self.carried[side_key(key, mid)] = (partition, edit)
        self.indexes.pop(key)

    def drain_before(self) -> Iterator[tuple[str, Outbox]]:
        """Write the batch's sealed chunks and carried-over edits to the stores; yield
        their changelog topics and records by partition, to be sent and acknowledged
        **before** the conversation records: a durable record must never count a chunk
        that is not (it would count messages twice), nor lose the edits of the old record
        it replaced."""
        yield from self._drain(self.digests, self.chunks)
        yield from self._drain(
            self.edits, {k: (p, encode_edit(e)) for k, (p, e) in self.carried.items()}
        )
        self.chunks = {}
        self.carried = {}

    def drain_after(self) -> Iterator[tuple[str, Outbox]]:
        """Write the batch's edits to the store; yield their changelog records, to be sent
        **after** the conversation records are acknowledged. The other way round, a crash
        between the two would leave the table ahead of the records, and the replayed
        batch would read an edit before refolding it: a message would show its edit one
        change early and the changes after it would be numbered differently. This way a
        crash between the two leaves the records ahead: the replayed edit writes the
        table again, and a record already holding its effects changes nothing."""
        yield from self._drain(
            self.edits, {k: (p, encode_edit(e)) for k, (p, e) in self.pending_edits.items()}
        )
        self.pending_edits = {}

    def _drain(
        self, table: Any, writes: dict[str, tuple[int, bytes]]
    ) -> Iterator[tuple[str, Outbox]]:
        if not writes:
            return
        outbox: Outbox = {}
        remember = self._remember[table]
        for k, (partition, value) in writes.items():
            store_put(table, k, value)  # F7
            remember(k, partition)
            # "json": the serializer faust picks for key_type=str, used on recovery.
            raw_key = codecs.dumps("json", k)
            outbox.setdefault(partition, []).append((raw_key, value))
        yield table.changelog_topic.get_topic_name(), outbox

    def forget(self, held: Any) -> None:
        """After a rebalance: drop the indexes of conversations no longer ``held``."""
        for key in self.indexes.snapshot():
            if key not in held:
                self.indexes.pop(key)


class DecodedStates:
    """The conversations table's values, decoded once and not per batch, for the most
    recently used ``DECODED_STATES`` conversations (the others decode when used)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._cache: LRU[str, tuple[bytes, StreamState]] = LRU(DECODED_STATES)

    def load(self, key: str) -> Decoded | None:
        """Return the decoded record of ``key``, or None. Raises ``ValueError``."""
        value = self.table.get(key)
        if value is None:
            return None
        cached = self._cache.get(key)
        if cached is not None and cached[0] is value:
            return Decoded(cached[1])
        decoded = decode_state(value)
        if not (decoded.chunks or decoded.edits):
            self._cache.put(key, (value, decoded.state))
        return decoded

    def put(self, key: str, value: bytes, state: StreamState) -> None:
        """Remember that ``value``, just stored, decodes to ``state``."""
        self._cache.put(key, (value, state))

    def forget(self) -> None:
        """Drop the conversations the table no longer holds (after a rebalance)."""
        held = self.table.data
        for key in self._cache.snapshot():
            if key not in held:
                self._cache.pop(key)

    def __len__(self) -> int:
        return len(self._cache)
