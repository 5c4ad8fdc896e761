"""F15 (speed only): the fold's events handed over a fetch at a time, not record by record.

faust hands every fetched record on alone: its consumer's ``getmany`` yields it (with a
highwater lookup and a monitor call), the drain loop checks it and awaits the
conductor's ``on_message`` (the flow-control lock, the producer buffer's mark, the
channel's queue), and the agent's ``Stream`` takes it off that queue (sensors, the
context variable, the processors). Profiled over all of the worker's threads, that hand-on
cost the worker about as much CPU as its fold (docs/performance.md). Quix Streams and the
plain loop hand a whole poll over at once.

:class:`Intake` takes the records of the fold's source topic out of each fetch before
faust's drain sees them (it replaces the consumer's ``getmany``; every other topic, the
tables' changelogs among them, still goes through faust's own path) and appends their
events to the batch the fold agent takes next (:meth:`Intake.batches`). What faust's
path does for a record and the fold relies on is done here, in the same order: the
offsets read (``_read_offset``, and the gaps in them under exactly-once), records of a
partition paused while they were fetched left out (F2: they are read again after the
seek), nothing delivered while the flow is suspended or after the consumer generation
changed, the events tracked as unacked when the fold takes them (faust's ``wait_empty``
at a rebalance then waits for them) and acked by the fold as before (``ack_batch``).

Bounds and rebalances: the batch being gathered holds at most ``size`` events; once full,
the fetch's remaining records wait for the fold to take the batch (the drain, and so
faust's fetching into the loop, waits with them, as it does for a full stream buffer).
The gathering batch is registered with faust's flow control like a stream's buffer: a
rebalance's ``flow_control.clear()`` drops it, as faust drops the events its streams had
not taken; they were not tracked and the seek that ends the rebalance reads them again.

Off (``"F15" in DISABLED`` when the app is made), the agent takes its batches through
faust's stream (F12's :func:`streams.faust_fixes.take_batches`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import faust

from streams.faust_fixes import DISABLED


class Intake:
    """The fold agent's events from ``topic``, gathered into batches of up to ``size``."""

    def __init__(self, app: faust.App, topic: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least one event, not {size}")
        self.app = app
        self.topic = topic
        self.size = size
        self.gathering: list[Any] = []
        self.opened = 0.0  # when the gathering batch got its first event
        self.full = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.installed = False

    @property
    def enabled(self) -> bool:
        return "F15" not in DISABLED

    # --- the consumer's side -----------------------------------------------------------

    def install(self, consumer: Any) -> None:
        """Take the source topic's records out of ``consumer``'s fetches (F15 on)."""
        if not self.enabled or self.installed:
            return
        self.installed = True
        self.app.flow_control.manage_queue(self)  # type: ignore[arg-type]  # clear() only
        consumer.getmany = self._getmany_of(consumer)

    def clear(self) -> None:
        """faust's flow control at a rebalance: drop the events not taken by the fold."""
        self.gathering = []
        self.full.clear()
        self.room.set()

    def _getmany_of(self, consumer: Any) -> Any:
        app = self.app
        topic = self.topic
        to_message = consumer._to_message
        buffered = consumer._buffered_partitions

        async def getmany(timeout: float) -> AsyncIterator[tuple[Any, Any]]:  # noqa: ASYNC109
            records, active = await consumer._wait_next_records(timeout)
            generation = app.consumer_generation_id
            if records is None or consumer.should_stop:
                return
            if not consumer.flow_active:
                # As faust's: nothing of the fetch delivered, the positions sought back.
                try:
                    await consumer.perform_seek()
                except Exception as exc:  # noqa: BLE001  # faust's own handling
                    consumer.log.warning("exception performing seek when flow not active %r", exc)
                return
            rest: dict[Any, Any] = {}
            for tp, fetched in records.items():
                if tp.topic != topic:
                    rest[tp] = fetched
                    continue
                paused = active is not None and tp not in active and tp not in buffered
                if not paused and not await self._deliver(consumer, tp, fetched, generation):
                    return
            for tp, record in consumer.scheduler.iterate(rest):
                if not consumer.flow_active or app.consumer_generation_id != generation:
                    break
                if active is None or tp in active or tp in buffered:
                    yield tp, to_message(tp, record)

        return getmany

    def _stopped(self, consumer: Any, generation: int) -> bool:
        return (
            not consumer.flow_active
            or not self.app.flow_control.is_active()
            or self.app.consumer_generation_id != generation
        )

    async def _deliver(self, consumer: Any, tp: Any, fetched: list[Any], generation: int) -> bool:
        """Append the events of one partition's fetched records to the gathering batch;
        return False once the flow stopped (the rest of the fetch is left unread)."""
        app = self.app
        await app.flow_control.acquire()
        await app.producer.buffer.wait_until_ebb()
        if self._stopped(consumer, generation):
            return False
        read = consumer._read_offset
        acking = app.topics.acks_enabled_for(tp.topic)
        commit_every = consumer._commit_every
        to_message = consumer._to_message
        create_event = app.create_event
        loop = asyncio.get_running_loop()
        for record in fetched:
            offset = record.offset
            last = read[tp]
            if last is not None and offset < last:
                continue  # read before (faust's drain drops it too)
            awaited = False
            if last and offset - last > 1 and acking:
                await consumer._add_gap(tp, last + 1, offset)
                awaited = True
            if commit_every is not None and consumer._n_acked >= commit_every:
                consumer._n_acked = 0
                await consumer.commit()
                awaited = True
            if awaited and self._stopped(consumer, generation):
                return False  # a rebalance began meanwhile (faust's getmany checks too)
            message = to_message(tp, record)
            message.refcount = 1  # incref() without its lock: no other thread has it yet
            if not self.gathering:
                self.opened = loop.time()
            self.gathering.append(
                create_event(message.key, message.value, message.headers, message)
            )
            read[tp] = offset
            if len(self.gathering) >= self.size:
                self.full.set()
                self.room.clear()
                await self.room.wait()
                if self._stopped(consumer, generation):
                    return False
        return True

    # --- the fold agent's side -------------------------------------------------------

    async def batches(
        self, stream: faust.Stream[bytes], within: float
    ) -> AsyncIterator[list[faust.EventT[bytes]]]:
        """Yield the gathered events in batches of up to ``size``, each when full or
        ``within`` seconds after its first event; the caller acks each batch
        (:func:`streams.faust_fixes.ack_batch`) once its writes are durable."""
        if not self.installed:
            raise RuntimeError("the intake was not installed on the app's consumer")
        loop = asyncio.get_running_loop()
        consumer: Any = self.app.consumer
        unacked = consumer._unacked_messages
        on_message_in = consumer._on_message_in
        # The sensors that do something (F14 leaves only faust's base Sensor, a no-op).
        watched = any(type(sensor) is not faust.Sensor for sensor in self.app.sensors)
        # When a stream last took an event of each partition: faust's check for stalled
        # streams (every 2.5 s) reads it from its monitor, which no longer hears of the
        # events (F14, and no stream here); without it a backlog older than
        # stream_processing_timeout (5 min) logged errors that the stream had never begun.
        inbound = self.app.monitor.stream_inbound_time
        while not stream.should_stop:
            if not self.full.is_set():
                wait = within if not self.gathering else self.opened + within - loop.time()
                if wait > 0:
                    await stream.wait_for_stopped(self.full, timeout=wait)  # type: ignore[arg-type]
            if not self.gathering:
                continue
            batch = self.gathering
            self.gathering = []
            self.full.clear()
            self.room.set()
            generation = self.app.consumer_generation_id
            now = time.monotonic()
            taken = []
            for event in batch:
                message = event.message
                if message.generation_id != generation:
                    continue  # an older generation's, read again after the seek
                message.tracked = True
                unacked.add(message)
                inbound[message.tp] = now
                if watched:
                    on_message_in(message.tp, message.offset, message)
                taken.append(event)
            if taken:
                yield taken
