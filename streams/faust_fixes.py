"""Every use of a private faust-streaming or aiokafka name in ``streams/``: the fixes.

The streams worker corrects or bypasses faust-streaming (and the aiokafka it drives) in
fourteen places, numbered F1-F15 in docs/streams.md ("Framework fixes"), which says for
each why, what breaks without it and the upstream issue. Twelve are here; F13 (the fold's
writes through librdkafka) uses no private name and lives in ``streams/sender.py``, F15
(the fold's events a fetch at a time) in ``streams/faust_intake.py``; F6 was retired when
F13 replaced it. Each fix here relies on names that are not part of
faust's public API and may change in any release within the pin; the rest of
``streams/`` reaches them only through the functions below and F15's ``Intake``.

The names each fix relies on are listed and checked at start in ``faust_check.py``
(:data:`FIXES`, :func:`check`, :class:`FaustFixError`, re-exported here): a release that
moved one fails at start, not later as duplicates or losses.

:data:`DISABLED` turns fixes off by number. Only the regression tests (each shows the
bad behaviour with its fix off) and the streams bench (``--worker-without``) set it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import faust
from faust.streams import current_event

from streams.faust_check import FIXES as FIXES
from streams.faust_check import FaustFixError as FaustFixError
from streams.faust_check import check as check
from streams.faust_check import versions

Outbox = dict[int, list[tuple[bytes, bytes]]]
"""Records by partition: ``{partition: [(key, value), ...]}``."""

#: Fix numbers switched off (tests and benchmarks only; empty in production).
DISABLED: set[str] = set()


@contextmanager
def without(*numbers: str) -> Iterator[None]:
    """Switch fixes off inside the block (regression tests and benchmarks only)."""
    before = set(DISABLED)
    DISABLED.update(numbers)
    try:
        yield
    finally:
        DISABLED.clear()
        DISABLED.update(before)


# --- F1 ---------------------------------------------------------------------------------


def bind_event(event: faust.EventT[bytes]) -> None:
    """F1: make ``event`` faust's current event, so table writes that follow go to the
    changelog partition of its page (a batch leaves it at the batch's last event)."""
    if "F1" not in DISABLED:
        faust.streams._current_event.set(weakref.ref(event))


# --- F2-F5: the consumer ----------------------------------------------------------------


def fix_consumer(consumer: Any) -> None:
    """Install F2-F5 and F11 on faust's (aiokafka driver) consumer, just made by the app."""
    seek_before_resume(consumer)
    highwaters_from_the_broker(consumer)
    hand_on_directly(consumer)


class FixedApp(faust.App):
    """faust's App with F2-F5 and F11 installed on its consumer as the app makes it, and
    F14's two per-record savings (its events made without a settings lookup, no
    monitor)."""

    #: Called with the consumer once the app made it (F15's intake installs itself).
    consumer_hooks: list[Callable[[Any], None]]

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        fix_consumer(consumer)
        for hook in getattr(self, "consumer_hooks", ()):
            hook(consumer)
        return consumer

    @cached_property
    def _event_type(self) -> Any:
        return self.conf.Event

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        """F14 (speed only): faust reads its ``Event`` setting anew for every record
        (settings' ``__getattribute__``, a few µs each); the class is read once here."""
        if "F14" in DISABLED:
            return super().create_event(key, value, headers, message)
        return self._event_type(self, key, value, headers, message)

    def on_init_dependencies(self) -> Any:
        """F14 (speed only): faust's ``Monitor`` sensor is replaced by its base ``Sensor``,
        which does nothing. The monitor is called five times per record (in, stream in
        and out, out, table reads) to keep statistics the worker never reads (its
        metrics and lag come from streams/stats.py and the consumer, F10); faust's ``/``
        page listed them. A sensor stays: with none, faust warns at every rebalance that
        its sensors' state is missing."""
        dependencies = super().on_init_dependencies()
        if "F14" not in DISABLED:
            self.sensors.remove(self.monitor)
            self.sensors.add(faust.Sensor())
        return dependencies


class RawSchema(faust.Schema[bytes, bytes]):
    """F14 (speed only): a topic's keys and values as the bytes Kafka holds.

    The same result as ``key_serializer="raw", value_serializer="raw"`` (the raw codec
    returns bytes as they are, and a missing key or value stays None), without the two
    codec-registry lookups faust makes per record for it.
    """

    def loads_key(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> Any:
        if "F14" in DISABLED:
            return super().loads_key(app, message, loads=loads, serializer=serializer)
        return message.key

    def loads_value(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> Any:
        if "F14" in DISABLED:
            return super().loads_value(app, message, loads=loads, serializer=serializer)
        return message.value


def seek_before_resume(consumer: Any) -> None:
    """F2, F3 and F4: how faust hands stream partitions over after a rebalance.

    faust drops records it fetched for a partition that is paused by the time it
    iterates them, and relies on seeking every partition back to its committed offset
    when the rebalance completes (docs/streams.md has the cases seen after a SIGKILL).
    F2: ``Recovery.on_recovery_completed`` resumes the stream partitions before it
    seeks them; a stream partition faust resumes is held paused here until the next
    seek completed. F3: that seek skips a partition without a committed offset, so
    records dropped there were lost; such partitions are rewound to the start (the fold
    treats what it sees again as duplicates). F4: aiokafka reads an empty set of active
    partitions as "every partition", and faust passes its live set, which a pause can
    empty mid-call; the fetch gets a copy here and is skipped when that is empty.
    """
    resume = consumer.resume_partitions
    seek = consumer.perform_seek
    getmany = consumer._getmany
    held: set[Any] = set()

    def streams_of(tps: Any) -> set[Any]:
        return {tp for tp in tps if not consumer._is_changelog_tp(tp)}

    def resume_partitions(tps: Any) -> None:
        tps = set(tps)
        streams = streams_of(tps)
        held.update(streams)
        resume(tps - streams)

    async def perform_seek() -> None:
        try:
            await seek()
            if "F3" not in DISABLED:
                committed = consumer._committed_offset
                fresh = {
                    tp: 0 for tp in streams_of(consumer.assignment()) if committed.get(tp) is None
                }
                if fresh:
                    await consumer.seek_wait(fresh)
        finally:
            ready = held & set(consumer.assignment())
            held.clear()
            resume(ready)

    async def _getmany(active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
        if active_partitions is None:
            return await getmany(active_partitions=None, timeout=timeout)
        snapshot = set(active_partitions)
        if not snapshot:
            await asyncio.sleep(min(timeout, 0.1))
            return {}
        return await getmany(active_partitions=snapshot, timeout=timeout)

    if "F2" not in DISABLED:
        consumer.resume_partitions = resume_partitions
    if "F2" not in DISABLED or "F3" not in DISABLED:
        consumer.perform_seek = perform_seek
    if "F4" not in DISABLED:
        consumer._getmany = _getmany


def highwaters_from_the_broker(consumer: Any) -> None:
    """F5: table recovery reads each changelog partition's end from the broker.

    Under exactly_once faust answers with the last stable offset aiokafka cached from
    its latest fetch: nothing for a partition not fetched yet, which faust reads as an
    empty changelog (a worker that took partitions over "recovered" empty tables). A
    ListOffsets request, sent with the consumer's isolation level, answers the last
    stable offset whether fetched or not.
    """
    if "F5" in DISABLED:
        return
    thread = consumer._thread

    async def _highwaters(partitions: Any) -> Any:
        return await thread._ensure_consumer().end_offsets(partitions)

    thread._highwaters = _highwaters


# --- F11: the hand-on of fetched records ------------------------------------------------


def hand_on_directly(consumer: Any) -> None:
    """F11 (speed only): hand a fetched record to the streams without four tasks.

    faust's drain loop hands each record on as ``wait_first(callback(message),
    suspend_flow.wait())``: two tasks, an ``asyncio.wait`` and its cancellations per
    record, which cost the worker more CPU than the fold (docs/performance.md). Watching
    ``suspend_flow`` matters only while the callback could wait for the flow to resume:
    on a paused flow, on faust's producer buffer past its mark, or on the conductor's
    lock held by a rebalance. When none of these holds, the callback is awaited
    directly; otherwise faust's way is taken. A full stream buffer is no exception: the
    callback then waits for room, and a rebalance's ``flow_control.clear()`` cancels
    that wait (``ThrowableQueue.clear`` cancels its putters), as it cancels it under
    ``wait_first``, so no record of a revoked partition is delivered after the clear.
    Recognised by the callback's code: any other ``wait_first`` is faust's own.
    """
    wait_first = consumer.wait_first
    on_message = consumer.callback.__code__
    app = consumer.app
    conductor = app.topics
    flow = app.flow_control
    suspended = consumer.suspend_flow.is_set
    # ProducerBuffer.size reads the setting anew on every call (a tenth of this check).
    threaded = app.conf.producer_threaded

    def cannot_block() -> bool:
        buffer = app.producer.buffer
        size = buffer.size if threaded else buffer.pending.qsize()
        return (
            not suspended()
            and flow.is_active()
            and not conductor._tp_to_callback_lock.locked()
            and size <= buffer.max_messages
        )

    def direct_wait_first(*coros: Any, timeout: float | None = None) -> Any:
        if (
            "F11" not in DISABLED
            and len(coros) == 2
            and getattr(coros[0], "cr_code", None) is on_message
            and timeout is None
            and cannot_block()
        ):
            coros[1].close()  # suspend_flow.wait(), never started
            return coros[0]  # the drain awaits the callback itself
        return wait_first(*coros, timeout=timeout)

    consumer.wait_first = direct_wait_first


# --- F12: the batches of the fold agent --------------------------------------------------


async def take_batches(
    stream: faust.Stream[bytes], size: int, within: float, *, caller_acks: bool = False
) -> AsyncIterator[list[faust.EventT[bytes]]]:
    """F12 (speed only): yield the stream's events in batches of up to ``size``; the next
    batch gathers while the caller folds one.

    faust's ``take_events`` stops its intake while a batch is out (its
    ``buffer_consuming`` future): the stream hands the next batch over record by record
    only once the fold returns, so the two take turns on one loop although the fold
    mostly waits for Kafka's acks (docs/performance.md). Here the intake goes on: the
    gathering batch holds at most ``size`` events (the stream's processor waits for room
    once it is full), and a batch is yielded when it is full or ``within`` seconds after
    its first event. A batch's events are acked, as by ``take_events``, when the loop body
    that got it ends, and only they: the gathering events are acked with their own batch.
    A rebalance waits for the consumer's unacked events (faust's ``wait_empty``), which
    the gathering batch is yielded to within ``within``, as ``take_events``' buffer was.
    With ``caller_acks`` a batch is not acked when the loop body ends: the caller acks it
    (:func:`ack_batch`) once its writes are durable, possibly after the next batch came.
    Off, ``take_events`` itself (which acks at the loop body's end: ``caller_acks`` is
    refused).
    """
    if "F12" in DISABLED:
        if caller_acks:
            raise RuntimeError("take_events acks each batch itself (F12 is off)")
        async for batch in stream.take_events(size, within=within):
            yield list(batch)
        return
    loop = asyncio.get_running_loop()
    gathering: list[faust.EventT[bytes]] = []
    full = asyncio.Event()
    room = asyncio.Event()
    room.set()
    opened = [0.0]  # when the gathering batch got its first event

    async def gather(value: bytes) -> bytes:
        event = stream.current_event
        if event is None:
            raise RuntimeError("the batch intake found no current event")
        if not gathering:
            opened[0] = loop.time()
        gathering.append(event)
        if len(gathering) >= size:
            full.set()
            room.clear()
            await stream.wait(room)  # type: ignore[arg-type]  # mode's Event annotation
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acked here, once the loop body is done with them
    stream.add_processor(gather)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[arg-type]  # as take_events
    try:
        while not stream.should_stop:
            if not full.is_set():
                wait = within if not gathering else opened[0] + within - loop.time()
                if wait > 0:
                    await stream.wait_for_stopped(full, timeout=wait)  # type: ignore[arg-type]
            if not gathering:
                continue
            batch = gathering[:]
            gathering.clear()
            full.clear()
            room.set()
            try:
                yield batch
            finally:
                if not caller_acks:
                    await ack_batch(stream, batch)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(gather)


async def ack_batch(stream: faust.Stream[bytes], batch: list[faust.EventT[bytes]]) -> None:
    """F12: ack the events of a batch :func:`take_batches` yielded, as its loop does."""
    for event in batch:
        await stream.ack(event)


# --- F7-F9: tables ----------------------------------------------------------------------


def store_put(table: Any, key: Any, value: Any) -> None:
    """F7: put ``value`` in ``table``'s store without faust's changelog send; the caller
    sends the changelog record itself and awaits it (``Folder._store``).

    faust's ``table[key] = value`` sends the record through its producer buffer, from a
    background task its transactional commit does not wait for, and its at-least-once
    commit does not look at whether the write failed. Off, the write goes through faust
    (its buffered changelog record besides the caller's).
    """
    if "F7" in DISABLED:
        table[key] = value
    else:
        table.data[key] = value


def queue_changelog(table: Any, queue: list[tuple[int, Any, Any]]) -> None:
    """F8: make writes to ``table`` queue ``(partition, key, value)`` in ``queue`` instead
    of sending their changelog record; the fold sends the queue with its batch.

    The same as faust's ``Table.on_key_set`` (remember the key's window for expiry, tell
    the sensors) except the send, which costs a third of the worker's CPU and, through
    faust's buffer, is neither awaited nor in the batch's transaction. The partition is
    the current event's (F1).
    """
    if "F8" in DISABLED:
        return
    sensor = table.app.sensors.on_table_set

    def on_key_set(key: Any, value: Any) -> None:
        event = current_event()
        if event is None:
            raise RuntimeError(f"table {table.name} written outside of the fold")
        partition = event.message.partition
        queue.append((partition, key, value))
        table._maybe_set_key_ttl(key, partition)
        sensor(table, key, value)

    table.on_key_set = on_key_set


def key_partitions(table: Any) -> MutableMapping[Any, int]:
    """F9: return the key -> changelog partition map of ``table``'s memory store.

    The store drops, once recovery after a rebalance completes, the keys of partitions
    no longer active here, but knows the partition only of keys it read from the
    changelog. Off, a map the store does not read (the keys this worker wrote stay).
    """
    if "F9" in DISABLED:
        return {}
    known = getattr(table.data, "_key_partition", None)
    if not isinstance(known, MutableMapping):
        raise FaustFixError(
            f"F9: table {table.name}: the store ({type(table.data).__name__}) keeps no "
            f"key -> partition map (_key_partition) in {versions()}"
        )
    return known


def hook_keys(
    table: Any, after_set: Callable[[Any, Any], None], after_del: Callable[[Any], None]
) -> None:
    """F9: call ``after_set(key, value)`` / ``after_del(key)`` after faust's (or F8's)
    key hooks of ``table``. Call after any other replacement of the hooks."""
    if "F9" in DISABLED:
        return
    key_set, key_del = table.on_key_set, table.on_key_del

    def on_key_set(key: Any, value: Any) -> None:
        key_set(key, value)
        after_set(key, value)

    def on_key_del(key: Any) -> None:
        key_del(key)
        after_del(key)

    table.on_key_set = on_key_set
    table.on_key_del = on_key_del


# --- F10: reading the consumer ----------------------------------------------------------


def read_offsets(app: faust.App) -> tuple[Any, MutableMapping[Any, int | None]] | None:
    """F10: return faust's consumer and its offsets of the last record read per
    partition (the map faust's own monitor reads), or None before the consumer exists:
    faust makes its consumer on first use, never from a scrape."""
    consumer: Any = getattr(app, "_consumer", None)
    if consumer is None:
        return None
    return consumer, consumer._read_offset
