"""The batch being gathered: records decoded as they are consumed, their size, their
order, and the offsets a commit of them moves to."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Message

from consumers.materializer.config import BatchConfig
from consumers.materializer.dlq import Poison
from consumers.materializer.rows import STAGE_COLUMNS, Position, StageRow, decode
from convsync.errors import PoisonError

# Most records one consume() returns: the messages of one consume() stay in memory until
# all of them are decoded, so a few thousand at a time, not the whole prefetch.
CONSUME_CHUNK: Final = 2000

# One record of a batch: its staging row (which holds its topic, partition and offset),
# or its Poison (which holds its original bytes). The Kafka message itself is not kept:
# it costs as much memory as the row, and two batches are held at a time.
Item = StageRow | Poison

_TOPIC, _PARTITION, _OFFSET = (STAGE_COLUMNS.index(c) for c in ("topic", "partition", "offset"))


def key(item: Item) -> tuple[int, int]:
    """Return the (partition, offset) of a batch item."""
    if isinstance(item, Poison):
        return (item.position.partition, item.position.offset)
    return (item[_PARTITION], item[_OFFSET])


def position(item: Item) -> Position:
    """Return where a batch item was read."""
    if isinstance(item, Poison):
        return item.position
    return Position(item[_TOPIC], item[_PARTITION], item[_OFFSET])


def rows(items: Iterable[Item]) -> list[StageRow]:
    """Return the staging rows of ``items`` (poison left out)."""
    return [i for i in items if not isinstance(i, Poison)]


def next_offsets(items: Iterable[Item]) -> dict[int, int]:
    """Return the offset after the last of ``items`` in each of their partitions: the
    resume cursor a commit of them stores (poison included: it is dead-lettered)."""
    out: dict[int, int] = {}
    for item in items:
        p, offset = key(item)
        if offset >= out.get(p, 0):
            out[p] = offset + 1
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    """What the accounting of a committed batch needs of it."""

    records: int
    good: int
    poison: frozenset[tuple[int, int]]
    value_bytes: int

    @classmethod
    def of(cls, items: Sequence[Item], value_bytes: int) -> Summary:
        """Summarize ``items``, whose record values added up to ``value_bytes``."""
        poison = frozenset(key(i) for i in items if isinstance(i, Poison))
        return cls(len(items), len(items) - len(poison), poison, value_bytes)


class Batch:
    """The records gathered for the next commit, in the order they were consumed.

    A record is decoded when it is added (on the consumer thread, while the writer
    thread writes the previous batch), so a decoding failure is known as poison before
    the batch goes out. One Batch lives as long as its materializer: it is emptied when
    its records are handed over, and a failed write's records are put back in front.
    """

    def __init__(self) -> None:
        self.items: list[Item] = []
        # Sum of the record values in items (BatchConfig.max_bytes).
        self.value_bytes = 0
        # When the first record of items arrived (monotonic clock).
        self.started = 0.0
        # The offset after the last record added, per partition, across batches: how
        # far the consumer has read.
        self.read_to: dict[int, int] = {}
        # Batch order of the rows (StageRow "seq"), increasing across batches so that a
        # failed batch put back in front of the next one keeps its order.
        self._seq = 0
        # One topic name string shared by every row, not one per Kafka message.
        self._topics: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, msg: Message) -> None:
        """Decode a consumed record into the batch: a row, or poison with its reason."""
        if not self.items:
            self.started = time.monotonic()
        topic = msg.topic()
        assert topic is not None  # a record, not an error
        topic = self._topics.setdefault(topic, topic)
        p, offset = msg.partition(), msg.offset()
        assert p is not None and offset is not None
        pos = Position(topic, p, offset)
        value = msg.value()
        self._seq += 1
        try:
            item: Item = decode(value, pos, self._seq)
        except PoisonError as e:
            item = Poison(pos, msg.key(), value, str(e), type(e).__name__)
        self.items.append(item)
        self.value_bytes += len(value) if value else 0
        self.read_to[p] = max(self.read_to.get(p, 0), offset + 1)

    def put_back(self, items: Sequence[Item], value_bytes: int) -> None:
        """Put the records of a failed write back in front (the consumer has moved past
        them), to be written again with the ones gathered since."""
        if not self.items:
            self.started = time.monotonic()
        self.items = [*items, *self.items]
        self.value_bytes += value_bytes

    def drop(self, partitions: Set[int]) -> None:
        """Forget the records of ``partitions`` (revoked or lost: the next owner reads
        them again from the stored offsets)."""
        kept = [i for i in self.items if key(i)[0] not in partitions]
        # The values' sizes are not kept per record: assume the dropped ones were average.
        if self.items:
            self.value_bytes = self.value_bytes * len(kept) // len(self.items)
        self.items = kept

    def holds_any(self, partitions: Set[int]) -> bool:
        """Return whether a record of ``partitions`` is in the batch."""
        return any(key(i)[0] in partitions for i in self.items)

    def clear(self) -> None:
        """Empty the batch (its records were handed over, committed or abandoned)."""
        self.items = []
        self.value_bytes = 0

    def next_poll(self, config: BatchConfig, *, writer_busy: bool) -> tuple[float, int]:
        """Return how long the next consume() may wait and how many records it may
        return."""
        if self.items:
            # At most idle_poll, so that stop() is noticed with a long max_wait too.
            timeout = min(
                config.idle_poll, max(0.0, self.started + config.max_wait - time.monotonic())
            )
            want = config.max_records - len(self.items)
            # consume() returns early only with all it was asked for: ask for no more
            # than the byte budget leaves, at the batch's mean record size so far.
            mean = self.value_bytes / len(self.items)
            if mean > 0:
                want = min(want, math.ceil((config.max_bytes - self.value_bytes) / mean))
            want = min(want, CONSUME_CHUNK)
        else:
            # consume() waits for all it was asked for: ask for one record so the batch
            # clock starts when the first record arrives, not when the poll gives up.
            timeout, want = config.idle_poll, 1
        if writer_busy:
            # Look at the writer often: the next batch goes out as soon as it is free.
            timeout = min(timeout, config.busy_poll) if timeout > 0 else config.busy_poll
        return timeout, max(1, want)

    def due(self, config: BatchConfig, *, writer_busy: bool) -> bool:
        """Return whether the batch must go out now.

        While Postgres writes the previous batch the next one keeps growing (up to
        ``max_records`` or ``max_bytes``): a free writer takes it ``max_wait`` after its
        first record, a busy one as soon as it is done.
        """
        return bool(self.items) and (
            len(self.items) >= config.max_records
            or self.value_bytes >= config.max_bytes
            or (not writer_busy and time.monotonic() - self.started >= config.max_wait)
        )
