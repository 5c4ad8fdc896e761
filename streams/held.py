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

from collections.abc import Callable, MutableMapping
from typing import Any

from faust.streams import current_event


def _partitions_of(table: Any) -> MutableMapping[Any, int]:
    known = getattr(table.data, "_key_partition", None)
    if not isinstance(known, MutableMapping):
        # A faust upgrade moved the attribute: fail at start-up, not with stale pages.
        raise TypeError(
            f"table {table.name}: the store ({type(table.data).__name__}) keeps no "
            "key -> partition map; streams/held.py needs faust-streaming 0.15's memory store"
        )
    return known


# The map may hold this many more keys than the store before gone keys are swept out.
SLACK = 1024

Remember = Callable[[Any, int], None]
"""``remember(key, partition)``: record the partition of a key written to the store."""


def track_partitions(table: Any) -> Remember:
    """Record the partition of every key written or deleted through ``table``.

    The partition is that of the current event (the fold binds each page's event before
    its table writes). Call after any other replacement of the table's key hooks.
    Returns the recorder for writes that go to the table's store directly.
    """
    store = table.data
    known = _partitions_of(table)
    key_set, key_del = table.on_key_set, table.on_key_del

    def remember(key: Any, partition: int) -> None:
        known[key] = partition
        # faust expires windows by popping them from the store directly, past every
        # hook: sweep their entries once the map outgrows the store, so it stays within
        # 2x + SLACK of it at an amortized O(1) per write.
        if len(known) > 2 * len(store) + SLACK:
            for gone in [k for k in known if k not in store]:
                del known[gone]

    def on_key_set(key: Any, value: Any) -> None:
        key_set(key, value)
        event = current_event()
        if event is None:
            raise RuntimeError(f"table {table.name} written outside of an event")
        remember(key, event.message.partition)

    def on_key_del(key: Any) -> None:
        key_del(key)
        known.pop(key, None)

    table.on_key_set = on_key_set
    table.on_key_del = on_key_del
    return remember
