"""Finding the row Postgres refuses in a batch: halve the batch until that row is alone,
dead-letter it, and move its offset past it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from consumers.materializer.batch import Item, next_offsets, rows
from consumers.materializer.rows import StageRow
from consumers.materializer.store import BatchResult
from convsync.errors import PoisonError

#: Writes rows and moves the offsets of their partitions in one transaction
#: (Store.write_batch with the group and topic bound).
Write = Callable[[Sequence[StageRow], Mapping[int, int]], BatchResult]
#: Dead-letters the one item Postgres refused, with the refusal.
Refused = Callable[[Item, PoisonError], None]


def write_bisecting(items: Sequence[Item], write: Write, refused: Refused) -> BatchResult:
    """Write ``items`` and their offsets; return what was written.

    A row that passed validation may still be refused by Postgres (a constraint the
    envelope cannot know): then each half is written on its own (each committing its
    own rows and offsets) until the refused row is alone; it goes to ``refused`` and
    only its offset is written. Raises what ``write`` raises otherwise (RetryableError:
    the halves that committed are no-ops when the batch is retried).
    """
    try:
        return write(rows(items), next_offsets(items))
    except PoisonError as e:
        if len(items) == 1:
            refused(items[0], e)
            return write([], next_offsets(items))
        half = len(items) // 2
        a = write_bisecting(items[:half], write, refused)
        b = write_bisecting(items[half:], write, refused)
        return BatchResult(
            a.staged + b.staged,
            a.inserted + b.inserted,
            a.conversations_changed + b.conversations_changed,
            a.upgraded + b.upgraded,
        )
