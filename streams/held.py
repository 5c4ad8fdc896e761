"""Tables that let go of the pages of partitions a rebalance moved to another worker.

faust's memory store drops, once recovery after a rebalance completes, every key whose
changelog partition is no longer active on this worker. It knows a key's partition only
when it read the key from the changelog, though: the keys this worker wrote itself it
kept, so after a rebalance its ``/stats/`` and ``/metrics`` went on showing the pages
it had handed over, frozen, next to the worker that now owns them (a sum over workers
counted those pages twice), and their conversation states stayed in its memory.

:func:`track_partitions` makes a table tell its store the partition of every key this
worker writes through the table, and returns the recorder for writes that go to the
store directly. The store's own clean-up then covers them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.streams import current_event

from streams.faust_fixes import hook_keys, key_partitions

# The map may hold this many more keys than the store before gone keys are swept out.
SLACK = 1024

Remember = Callable[[Any, int], None]
"""``remember(key, partition)``: record the partition of a key written to the store."""


def track_partitions(table: Any) -> Remember:
    """Record the partition of every key written or deleted through ``table`` (F9 of
    streams/faust_fixes.py).

    The partition is that of the current event (the fold binds each page's event before
    its table writes). Call after any other replacement of the table's key hooks.
    Returns the recorder for writes that go to the table's store directly.
    Raises :class:`streams.faust_fixes.FaustFixError` if the store keeps no map.
    """
    store = table.data
    known = key_partitions(table)

    def remember(key: Any, partition: int) -> None:
        known[key] = partition
        # faust expires windows by popping them from the store directly, past every
        # hook: sweep their entries once the map outgrows the store, so it stays within
        # 2x + SLACK of it at an amortized O(1) per write.
        if len(known) > 2 * len(store) + SLACK:
            for gone in [k for k in known if k not in store]:
                del known[gone]

    def after_set(key: Any, value: Any) -> None:
        event = current_event()
        if event is None:
            raise RuntimeError(f"table {table.name} written outside of an event")
        remember(key, event.message.partition)

    def after_del(key: Any) -> None:
        known.pop(key, None)

    hook_keys(table, after_set, after_del)
    return remember
