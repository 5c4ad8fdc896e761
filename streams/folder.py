"""The fold of one batch of events (:class:`Folder`): its change records, the states,
side tables and statistics it leaves, and the order in which Kafka must acknowledge them
before the batch's events may be acked (the agent that drives it: streams/agent.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import faust
from faust.serializers import codecs

from convsync.errors import PoisonError
from convsync.settings import Settings
from schemas.conversation import conversation_key
from schemas.envelope import Envelope
from streams.change import StreamState, encode_change, step
from streams.codec import encode_state
from streams.deadletter import dead_letter, too_large
from streams.faust_fixes import DISABLED, Outbox, bind_event, store_put
from streams.held import track_partitions
from streams.sender import RdSender
from streams.side import DecodedStates, TableSide
from streams.stats import PageStats

log = logging.getLogger(__name__)

# Events folded between two turns of the event loop: a batch's fold is ~0.1 s of CPU,
# and the writes of the batches before it each wait for the loop between their steps.
FOLD_SLICE: Final = 100


def _encode(table: Any, queued: list[tuple[int, Any, Any]]) -> dict[int, list[tuple[bytes, bytes]]]:
    """Return queued changelog records of ``table`` serialized as faust would, by partition."""
    topic = table.changelog_topic
    outbox: dict[int, list[tuple[bytes, bytes]]] = {}
    for partition, key, value in queued:
        raw_key, _ = topic.prepare_key(key, table.key_serializer)
        raw_value, _ = topic.prepare_value(value, table.value_serializer)
        outbox.setdefault(partition, []).append((raw_key, raw_value))
    return outbox


@dataclass(frozen=True, slots=True)
class Plan:
    """One folded batch's writes (:meth:`Folder.fold`), serialized, in their order."""

    changes: Outbox  # the change records, by partition of <prefix>.conversations
    letters: list[tuple[faust.EventT[bytes], PoisonError, Awaitable[Any]]]  # sent
    emitted: int
    before_states: list[tuple[str, Outbox]]  # digest chunks, carried-over edits
    states: list[tuple[str, Outbox]]  # the states' and statistics' changelogs
    after_states: list[tuple[str, Outbox]]  # the batch's edits


class Folder:
    """Folds batches of events: emits change records, then stores the states."""

    def __init__(self, app: faust.App, settings: Settings, stats: PageStats) -> None:
        self.settings = settings
        self.stats = stats
        self.states = app.Table(
            "conversations",
            default=None,
            partitions=settings.partitions,
            key_type=str,
            value_type=bytes,
        )
        # _store writes states to the store directly (both guarantees): it records them.
        self._remember = track_partitions(self.states)
        # The sealed message digests and the edits of every message (streams/change.py).
        self.side = TableSide(app, partitions=settings.partitions)
        self._decoded = DecodedStates(self.states)
        self.states.on_recover(self._forget_decoded)
        self.app = app
        self.sink_name = settings.topic("conversations")
        self.dlq = app.topic(settings.topic("dlq"), key_serializer="raw", value_serializer="raw")
        # The change records and changelogs under at_least_once (streams/sender.py).
        self.sender = RdSender(settings)
        self._states_topic = self.states.changelog_topic.get_topic_name()
        self.emitted = 0

    async def process(self, events: Sequence[faust.EventT[bytes]]) -> None:
        """Fold one batch; return once every effect of it is durable in Kafka.

        Returns after Kafka acknowledged (acks=all) every change record, dead letter and
        changelog record (states, statistics) of the batch: only then may its events be
        acked. Raises whatever the producer raises (a record Kafka refused or did not
        confirm); the caller must then not let the batch be acked (:func:`fold_batch`).
        """
        await self.write(await self.fold(events))

    async def fold(self, events: Sequence[faust.EventT[bytes]]) -> Plan:
        """Fold one batch into the worker's memory (states, side tables, statistics);
        return its writes, serialized, for :meth:`write`.

        The next batch may be folded before this one's writes are durable (it reads the
        states this fold left: :class:`streams.pipeline.Pipeline`), but no event of the
        batch may be acked before :meth:`write` returned. Sends the dead letters (their
        acks are awaited by :meth:`write`).
        """
        pending: dict[str, tuple[faust.EventT[bytes], StreamState]] = {}
        by_page: dict[str, faust.EventT[bytes]] = {}
        letters: list[tuple[faust.EventT[bytes], PoisonError, Awaitable[Any]]] = []
        outbox: dict[int, list[tuple[bytes, bytes]]] = {}
        emitted = 0
        for i, event in enumerate(events):
            if i % FOLD_SLICE == FOLD_SLICE - 1:
                # Let the writes of the batches before this one go on (their acks are
                # answered between two slices), and the intake too.
                await asyncio.sleep(0)
            try:
                envelope = Envelope.from_bytes(event.value)
            except PoisonError as e:
                letters.append((event, e, await self._dead_letter(event, e)))
                continue
            key = conversation_key(envelope.page_id, envelope.psid)
            partition = event.message.partition
            if key in pending:
                before: StreamState | None = pending[key][1]
            else:
                before, carried = self.side.load(self._decoded, key, partition)
                if before is not None and carried:  # an old format: rewritten in this batch
                    pending[key] = (event, before)
            result = step(before, envelope, self.side)
            self.side.record(result, partition)
            by_page[envelope.page_id] = event
            self.stats.count(result, envelope)
            if result.state is not before:
                pending[key] = (event, result.state)
            if result.emitted:
                out = outbox.setdefault(event.message.partition, [])
                out.append((key.encode(), encode_change(result, envelope)))
                emitted += 1
        # The sealed digest chunks (and edits carried over from old records): sent first.
        before_states = list(self.side.drain_before())
        states: list[tuple[str, Outbox]] = [(self._states_topic, self._put_states(pending))]
        self.stats.write(lambda page: bind_event(by_page[page]))
        for table, queued in self.stats.changelog.items():
            if queued:
                states.append((table.changelog_topic.get_topic_name(), _encode(table, queued)))
                queued.clear()
        after_states = list(self.side.drain_after())
        return Plan(outbox, letters, emitted, before_states, states, after_states)

    def _put_states(self, pending: dict[str, tuple[faust.EventT[bytes], StreamState]]) -> Outbox:
        """Put the batch's new states in the table's store; return their changelog records.

        The same as ``self.states[key] = value`` (which sets the store and sends one
        changelog record through faust's producer buffer), with the records sent by
        :meth:`write`: under exactly_once into the transaction before the batch is acked,
        and awaited under both guarantees. faust's buffer sends from a background task,
        and its transactional commit does not wait for it: a record still buffered at a
        commit went into the next transaction, which a rebalance or crash then aborted
        while the offsets of the events that wrote it stayed committed, so the next owner
        of the partition recovered a state without them (seen as a worker that took over
        pages and showed none of them). faust's at-least-once commit flushes the producer
        but does not look at whether a write failed, so a refused write would otherwise
        be committed past.
        """
        outbox: Outbox = {}
        for key, (event, state) in pending.items():
            value = encode_state(state)
            store_put(self.states, key, value)  # F7
            self._remember(key, event.message.partition)
            self._decoded.put(key, value, state)
            # "json": the serializer faust picks for key_type=str, used again on recovery.
            raw_key = codecs.dumps("json", key)
            outbox.setdefault(event.message.partition, []).append((raw_key, value))
        return outbox

    async def write(self, plan: Plan) -> None:
        """Make one folded batch's writes durable, in the order a crash needs; return
        once Kafka acknowledged every one of them. Raises what the producer raises.
        """
        for stage in self.stages(plan):
            await stage()
        # The caller acks the batch once this returns, and faust commits acked offsets:
        # nothing of the batch is acked unless every stage is durable (an error raised
        # above crashes the worker before the ack, see fold_batch).

    def stages(self, plan: Plan) -> list[Callable[[], Awaitable[None]]]:
        """A folded batch's writes as stages to run in turn, each returning once Kafka
        acknowledged (acks=all) what it sent (streams/pipeline.py overlaps the stages of
        successive batches, in order)."""

        async def changes() -> None:
            # 1. Kafka acknowledges every change record and dead letter of the batch ...
            await asyncio.gather(*await self._send(self.sink_name, plan.changes))
            for event, error, delivery in plan.letters:
                await self._confirm_dead_letter(event, error, delivery)
            self.emitted += plan.emitted

        # 2. ... before the states that produced them go to the changelog, so the
        #    changelog is never ahead of the change records: a crash replays the batch
        #    from the recovered state and re-emits the same records with the same seq.
        #    The sealed digest chunks go first: a record that counts a chunk must never
        #    be durable without it.
        # 3. ... and then the edits, which a replayed batch must not read ahead of its
        #    records (TableSide.drain_after).
        return [
            changes,
            partial(self._send_all, plan.before_states),
            partial(self._send_all, plan.states),
            partial(self._send_all, plan.after_states),
        ]

    async def _send_all(self, boxes: list[tuple[str, Outbox]]) -> None:
        """Send records to their topics and wait until Kafka acknowledged them all."""
        await asyncio.gather(*[f for topic, box in boxes for f in await self._send(topic, box)])

    async def _send(self, topic: str, outbox: dict[int, list[tuple[bytes, bytes]]]) -> list[Any]:
        """Send records to ``topic`` by partition; return the futures of their delivery.

        Change records go to the partition their page has on <prefix>.events (both
        topics have settings.partitions partitions): a conversation's records stay in one
        partition. Changelog records go to the partition of the event that wrote them.
        Under exactly_once each record joins the open transaction of its partition, the
        one that also commits that partition's offsets; it is in the transactional
        producer before this returns, so no commit of the batch's offsets can miss it.
        Under at_least_once they go through librdkafka (streams/sender.py).
        """
        if self.app.in_transaction:
            manager = await self.app.maybe_start_producer()
            return [
                await manager.send(topic, key, value, partition, None, None)
                for partition, records in outbox.items()
                for key, value in records
            ]
        if "F13" not in DISABLED:
            return self.sender.send(topic, outbox)
        # F13 off (bench and tests): faust's per-record send through aiokafka.
        return [
            await self.app.producer.send(topic, key, value, partition, None, None)
            for partition, records in outbox.items()
            for key, value in records
        ]

    async def _forget_decoded(self) -> None:
        """After a rebalance: drop the decoded states and digest indexes of conversations
        the table let go."""
        self._decoded.forget()
        self.side.forget(self.states.data)

    async def _dead_letter(
        self, event: faust.EventT[bytes], error: PoisonError, *, copies: bool = True
    ) -> Awaitable[Any]:
        """Send the dead letter of ``event``; return the future of its delivery."""
        msg = event.message
        if copies:
            log.warning("poison event %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, error)
        letter = dead_letter(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value,
            error=error,
            failed_at=int(time.time() * 1000),
            copies=copies,
        )
        if letter.truncated:
            log.warning(
                "dead letter of %s[%s]@%s: copy of %s truncated",
                msg.topic,
                msg.partition,
                msg.offset,
                " and ".join(letter.truncated),
            )
        try:
            future: Awaitable[Any] = await self.dlq.send(
                key=letter.key, value=letter.value, headers=letter.headers
            )
        except Exception as e:
            # Refused before sending (over the producer's max_request_size).
            if not (copies and too_large(e)):
                raise
            return await self._dead_letter(event, error, copies=False)
        return future

    async def _confirm_dead_letter(
        self, event: faust.EventT[bytes], error: PoisonError, delivery: Awaitable[Any]
    ) -> None:
        """Wait for a dead letter; if Kafka refused it as too large, send it without the
        copies of the key and value and wait for that. Raises what the producer raises."""
        try:
            await delivery
        except Exception as e:
            if not too_large(e):
                raise
            await (await self._dead_letter(event, error, copies=False))
