"""The faust app: fold ``<prefix>.events`` into ``<prefix>.conversations`` change records."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, NoReturn

import faust
from faust.serializers import codecs
from prometheus_client import CollectorRegistry

from convsync.errors import PoisonError
from convsync.observe import Heartbeat
from convsync.settings import Settings
from schemas.conversation import conversation_key
from schemas.envelope import Envelope
from streams.broker import broker_credentials, broker_urls
from streams.change import StreamState, encode_change, step
from streams.codec import encode_state
from streams.deadletter import dead_letter, too_large
from streams.faust_fixes import (
    DISABLED,
    FixedApp,
    Outbox,
    RawSchema,
    ack_batch,
    bind_event,
    store_put,
    take_batches,
)
from streams.faust_intake import Intake
from streams.held import track_partitions
from streams.pipeline import Pipeline
from streams.sender import RdSender
from streams.side import DecodedStates, TableSide
from streams.stats import PageStats, StatsCollector
from streams.web import LagCollector, add_views

log = logging.getLogger(__name__)

CRASH_EXIT_CODE: Final = 70  # EX_SOFTWARE: a batch failed; its events were not acked
# Batches folded and not yet acknowledged, at most (streams/pipeline.py): a broker that
# answers late for a while holds up the writes, not the folds behind them.
PIPELINE_DEPTH: Final = 4
# Events folded between two turns of the event loop: a batch's fold is ~0.1 s of CPU,
# and the writes of the batches before it each wait for the loop between their steps.
FOLD_SLICE: Final = 100


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How one worker runs (the topics and broker come from :class:`Settings`)."""

    web_port: int = 6066
    web_host: str = "127.0.0.1"
    data_dir: Path = Path(".convsync/streams")
    replication_factor: int = 1
    batch_size: int = 1000
    batch_within: float = 0.2  # seconds to wait for a batch to fill
    commit_interval: float = 1.0
    processing_guarantee: str = "at_least_once"
    # /healthz answers 503 once a batch has been folding this long (seconds).
    stale_after: float = 120.0


def app_id(settings: Settings) -> str:
    """Return the faust app id: consumer group and table-topic prefix, from the topic prefix."""
    return f"{settings.topic_prefix}.streams"


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


def crash(error: BaseException) -> NoReturn:
    """Log ``error`` and end the process at once with :data:`CRASH_EXIT_CODE`.

    No faust shutdown: that would ack the failed batch (take_events acks in a
    ``finally``) and commit its offsets. Like a SIGKILL at this point, which the design
    tolerates: the restart resumes from the committed offsets with the tables recovered.
    """
    log.critical("a batch failed; exiting without acking it", exc_info=error)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


async def fold_batch(folder: Folder, batch: Sequence[faust.EventT[bytes]]) -> None:
    """Fold ``batch`` so that its events are acked only if all its effects are durable.

    ``take_events()`` acks a batch's events however the loop body that got it ends,
    and faust's supervisor restarts an agent that raised: an error of
    :meth:`Folder.process` would skip the batch, offsets committed past events that
    produced nothing. So an error crashes the worker (:func:`crash`) before the ack. A
    cancellation (a stop or rebalance mid-batch) lets the batch finish first, shielded,
    then propagates: the ack that follows is then true (:func:`finish`).
    """
    await finish(folder.process(batch))


async def finish(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end whatever cancellations come meanwhile; then raise the
    cancellation, if one came. Crash the worker (:func:`crash`) if ``work`` fails.

    Further cancellations meanwhile (a stop that cancels the agent again) are waited out
    the same way; until 2026-12-02 a second one crashed a clean stop with exit 70. If the
    work fails, or is itself cancelled, the worker crashes.
    """
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as e:
            if task.cancelled():
                crash(e)  # the work itself was cancelled: its effects are unknown
            cancelled = e
            continue
        except Exception as e:  # noqa: BLE001 - any error: the batch must not be acked
            crash(e)
        break
    if cancelled is not None:
        raise cancelled


def pipelined(config: StreamConfig) -> bool:
    """Whether the agent folds a batch while the one before is written
    (streams/pipeline.py): under at_least_once, with F12's intake. ``"pipeline" in
    DISABLED`` (bench and tests only) folds and writes each batch in turn, as
    exactly_once does."""
    return (
        config.processing_guarantee == "at_least_once"
        and "F12" not in DISABLED
        and "pipeline" not in DISABLED
    )


def make_app(settings: Settings, config: StreamConfig) -> faust.App:
    """Return the faust app for ``settings`` (not started; run it with a faust Worker).

    Raises :class:`ConfigError` when ``settings.kafka_extra`` cannot be given to aiokafka.
    """
    app = FixedApp(
        app_id(settings),
        broker=broker_urls(settings),
        # CONVSYNC_KAFKA_EXTRA (SASL/TLS) for every aiokafka client of the app.
        broker_credentials=broker_credentials(settings),
        store="memory://",
        processing_guarantee=config.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=config.replication_factor,
        table_standby_replicas=0,
        datadir=str(config.data_dir),
        web_enabled=True,
        web_port=config.web_port,
        web_bind=config.web_host,
        web_host=config.web_host,
        producer_acks=-1,
        # Bigger batches: aiokafka blocks a send while a full batch of its partition is
        # in flight, and a batch of ours emits hundreds of records per partition.
        producer_max_batch_size=512 * 1024,
        producer_linger=0.005,
        broker_commit_interval=config.commit_interval,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
    )
    stats = PageStats(app, partitions=settings.partitions)
    folder = Folder(app, settings, stats)

    @app.on_before_shutdown.connect
    def close_sender(_app: Any, /, *_: Any, signal: Any, **__: Any) -> Awaitable[None]:
        return folder.sender.close()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    registry.register(LagCollector(app, app_id(settings), settings.topic("events")))
    source = app.topic(
        settings.topic("events"),
        schema=RawSchema(key_serializer="raw", value_serializer="raw"),  # F14
    )
    # F15: the fold's events a fetch at a time (streams/faust_intake.py).
    intake = Intake(app, settings.topic("events"), config.batch_size)
    app.consumer_hooks = [intake.install]
    health = Heartbeat(config.stale_after)
    folding = [False]
    # While a batch's writes are out, /healthz follows them too (streams/pipeline.py).
    writing: list[Callable[[], bool]] = [lambda: False]

    @app.agent(source, name="fold")
    async def fold(stream: faust.StreamT[bytes]) -> None:
        # The batch intake works on the concrete Stream, not on the StreamT interface.
        assert isinstance(stream, faust.Stream)
        if pipelined(config):
            await fold_pipelined(stream)
            return
        if not intake.installed:
            async for batch in take_batches(stream, config.batch_size, config.batch_within):
                await fold_one(batch)
            return
        async for batch in intake.batches(stream, config.batch_within):
            try:
                await fold_one(batch)
            finally:  # as take_batches: on success, or a cancellation once folded
                await ack_batch(stream, batch)

    async def fold_one(batch: list[faust.EventT[bytes]]) -> None:
        folding[0] = True
        await fold_batch(folder, batch)
        folding[0] = False
        health.beat("folding")

    async def fold_pipelined(stream: faust.Stream[bytes]) -> None:
        async def ack(batch: list[faust.EventT[bytes]]) -> None:
            await ack_batch(stream, batch)

        line: Pipeline[list[faust.EventT[bytes]], Plan] = Pipeline(
            fold=folder.fold,
            # "staged" off (bench only): a batch's writes start once the batch before
            # is acked, one stage.
            stages=(
                (lambda plan: [partial(folder.write, plan)])
                if "staged" in DISABLED
                else folder.stages
            ),
            ack=ack,
            finish=finish,
            on_written=lambda: health.beat("folding"),
            depth=1 if "deep-pipeline" in DISABLED else PIPELINE_DEPTH,
        )
        writing[0] = line.writing
        try:
            batches = (
                intake.batches(stream, config.batch_within)
                if intake.installed
                else take_batches(stream, config.batch_size, config.batch_within, caller_acks=True)
            )
            async for batch in batches:
                folding[0] = True
                await line.add(batch)
                folding[0] = False
        finally:
            await line.drain()

    add_views(
        app,
        registry=registry,
        health=health,
        folding=lambda: folding[0] or writing[0](),
        stats=lambda: {"emitted": folder.emitted, **stats.snapshot()},
    )
    return app
