"""The materializer loop: Kafka records in, one Postgres transaction per batch out."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumers.materializer import metrics as m
from consumers.materializer.config import BatchConfig
from consumers.materializer.dlq import DeadLetterSink, Poison
from consumers.materializer.rows import STAGE_COLUMNS, Position, StageRow, decode
from consumers.materializer.store import BatchResult, Store
from consumers.materializer.writer import BackgroundWriter, InFlight
from convsync.errors import ConsumerFatalError, ConvsyncError, PoisonError, RetryableError
from convsync.kafka import is_fatal, make_consumer, read_watermarks
from convsync.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_GROUP = "convsync-materializer"
# Most records one consume() returns (see _poll_once).
CONSUME_CHUNK = 2000


class AbandonedError(ConvsyncError):
    """A batch was given up because the materializer is stopping (nothing was applied)."""


# One record of a batch, decoded as it is consumed: its staging row (which holds its
# topic, partition and offset), or its Poison (which holds its original bytes). The Kafka
# message itself is not kept: it cost as much memory as the row (~560 bytes each), and
# two batches are held at a time (docs/materializer.md, eleventh pass).
Item = StageRow | Poison

_TOPIC, _PARTITION, _OFFSET = (STAGE_COLUMNS.index(c) for c in ("topic", "partition", "offset"))


@dataclass(frozen=True, slots=True)
class _Summary:
    """What accounting a committed batch needs."""

    records: int
    good: int
    poison: frozenset[tuple[int, int]]
    value_bytes: int

    @classmethod
    def of(cls, items: Sequence[Item], value_bytes: int) -> _Summary:
        poison = frozenset(_key(i) for i in items if isinstance(i, Poison))
        return cls(len(items), len(items) - len(poison), poison, value_bytes)


@dataclass(slots=True)
class Totals:
    """Running counters of one materializer (also exported as Prometheus metrics)."""

    records: int = 0
    inserted: int = 0
    dead_letters: int = 0
    batches: int = 0
    retries: int = 0


class Materializer:
    """Projects ``<prefix>.events`` into the Postgres schema, exactly once.

    Use :meth:`run` for a consumer-group member (``convsync materialize``) and
    :meth:`run_to_end` to read every partition from the beginning to its current end
    (``convsync replay``). :meth:`stop` may be called from any thread or a signal handler.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group: str = DEFAULT_GROUP,
        schema: str | None = None,
        config: BatchConfig | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        report_lag: bool = False,
    ) -> None:
        self.settings = settings
        self.group = group
        self.topic = settings.topic("events")
        self.config = config or BatchConfig()
        self.store = Store(settings, schema=schema, writers=self.config.writers)
        self.totals = Totals()
        self._dlq = DeadLetterSink(settings)
        self._overrides = consumer_overrides or {}
        self._report_lag = report_lag
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._batch: list[Item] = []
        # Sum of the record values in _batch (BatchConfig.max_bytes).
        self._batch_bytes = 0
        # Batch order of the rows (StageRow "seq"), increasing across batches so that a
        # failed batch put back in front of the next one keeps its order.
        self._seq = 0
        # The topic's name, shared by every row (not one string per Kafka message).
        self._topic_names: dict[str, str] = {self.topic: self.topic}
        self._batch_started = 0.0
        self._dead_sent: set[tuple[int, int]] = set()
        self._flushing = False
        self._owned: set[int] = set()
        self._last_lag = 0.0
        self._read_to: dict[int, int] = {}
        self._external_stop: threading.Event | None = None
        self._writer: BackgroundWriter[Item, _Summary, BatchResult] = BackgroundWriter()

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit it and close."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or the ``stop`` event given to run is set)."""
        if self._external_stop is not None and self._external_stop.is_set():
            self._stop.set()
        return self._stop.is_set()

    def _new_consumer(self) -> Consumer:
        conf: dict[str, Any] = {
            "on_commit": self._on_commit,
            "error_cb": self._on_error,
            # librdkafka pre-fetches up to 64 MB by default; a few batches ahead is
            # enough to keep Postgres busy and keeps the process's RSS small.
            "queued.max.messages.kbytes": 8192,
            # Once that prefetch is full librdkafka pauses fetching for this long
            # (default 1 s): a drained queue would then sit idle up to a second.
            "fetch.queue.backoff.ms": 20,
            # A fetch response is buffered whole (default up to 50 MB, 1 MB per
            # partition): with these the child's peak RSS in the bench fell from 174 to
            # 124-126 MB at the same throughput, room for larger batches. A record larger
            # than both is still fetched (alone).
            "fetch.max.bytes": 4 * 1024 * 1024,
            "max.partition.fetch.bytes": 256 * 1024,
            **self._overrides,
        }
        return make_consumer(self.settings, self.group, **conf)

    # -- consumer-group member ----------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None) -> Totals:
        """Consume as a member of the group until stopped; return the totals.

        Raises ConfigError when the schema is not migrated; Postgres and Kafka outages
        are retried with backoff, never raised.
        """
        self._external_stop = stop
        consumer = self._consumer = self._new_consumer()
        consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self.stopping:
                m.HEARTBEAT.beat("consuming")
                self._poll_once(consumer)
            self._flush_or_abandon()
        finally:
            self._close(consumer)
        return self.totals

    def run_to_end(self) -> Totals:
        """Read every partition from its first record to the end it has now, then stop.

        Uses manual assignment (no group membership); offsets are still written to
        ``consumer_offsets`` under this materializer's group. Returns the totals.
        """
        consumer = self._consumer = self._new_consumer()
        try:
            md = self._retry(lambda: _list_topic(consumer, self.topic))
            ends: dict[int, int] = {}
            for p in sorted(md):
                low, high = self._retry(functools.partial(_watermarks, consumer, self.topic, p))
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            self._owned = set(ends)
            while not self.stopping:
                if all(self._read_to.get(p, -1) >= end for p, end in ends.items()):
                    break
                self._poll_once(consumer)
            self._flush_or_abandon()
        finally:
            self._close(consumer)
        return self.totals

    def _close(self, consumer: Consumer) -> None:
        # A write still in flight here belongs to a failed loop: let it finish, keep
        # nothing of it (its offsets moved only if it committed).
        self._writer.close()
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as e:
            log.warning("consumer close: %s", e)
        self._dlq.close()
        self.store.close()
        self._consumer = None

    def _poll_once(self, consumer: Consumer) -> None:
        cfg = self.config
        busy = self._writer.busy
        if self._batch:
            # At most idle_poll, so that stop() is noticed with a long max_wait too.
            timeout = min(
                cfg.idle_poll, max(0.0, self._batch_started + cfg.max_wait - time.monotonic())
            )
            want = cfg.max_records - len(self._batch)
            # consume() returns early only with all it was asked for: ask for no more
            # than the byte budget leaves, at the batch's mean record size so far.
            mean = self._batch_bytes / len(self._batch)
            if mean > 0:
                want = min(want, math.ceil((cfg.max_bytes - self._batch_bytes) / mean))
            # The messages of one consume() live until all of them are decoded: a few
            # thousand at a time, not the whole prefetch (~28,000 bench records).
            want = min(want, CONSUME_CHUNK)
        else:
            # consume() waits for all it was asked for: ask for one record so the batch
            # clock starts when the first record arrives, not when the poll gives up.
            timeout, want = cfg.idle_poll, 1
        if busy:
            # Look at the writer often: the next batch goes out as soon as it is free.
            timeout = min(timeout, cfg.busy_poll) if timeout > 0 else cfg.busy_poll
        for msg in consumer.consume(num_messages=max(1, want), timeout=timeout):
            err = msg.error()
            if err is not None:
                self._on_record_error(err)
                continue
            self._take(msg)
        # While Postgres writes the previous batch the next one keeps growing (up to
        # max_records or max_bytes): a free writer takes it after max_wait, a busy one when
        # it is done.
        if self._batch and (
            len(self._batch) >= cfg.max_records
            or self._batch_bytes >= cfg.max_bytes
            or (not self._writer.busy and time.monotonic() - self._batch_started >= cfg.max_wait)
        ):
            self._flush_or_abandon(pipelined=True)
        elif self._writer.done and not self._settle_or_requeue():
            # The write failed and its records are back in the batch: retry them now in
            # the foreground (backoff, bisection of a refused row), never on the writer
            # thread again, where a refused row would fail forever and an outage would
            # be retried at poll speed.
            self._flush_or_abandon()
        if self._report_lag and time.monotonic() - self._last_lag >= cfg.lag_interval:
            self._last_lag = time.monotonic()
            self._refresh_lag(consumer)

    def _take(self, msg: Any) -> None:
        """Decode a consumed record into the batch (a row, or poison with its reason)."""
        if not self._batch:
            self._batch_started = time.monotonic()
        topic = msg.topic()
        topic = self._topic_names.setdefault(topic, topic)
        p, offset = msg.partition(), msg.offset()
        pos = Position(topic, p, offset)
        value = msg.value()
        self._seq += 1
        try:
            item: Item = decode(value, pos, self._seq)
        except PoisonError as e:
            item = Poison(pos, msg.key(), value, str(e), type(e).__name__)
        self._batch.append(item)
        self._batch_bytes += len(value) if value else 0
        self._read_to[p] = max(self._read_to.get(p, 0), offset + 1)

    def _on_record_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if is_fatal(err):
            raise ConsumerFatalError(f"consumer failed fatally: {err}")
        # Broker down, topic not created yet...: librdkafka reconnects by itself.
        log.warning("consumer: %s", err)

    # -- rebalance callbacks -------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions if tp.topic == self.topic]
        # The store's connection is the writer's while a write is in flight.
        self._settle_or_requeue()
        # 1. Read the resume cursor of the new partitions from Postgres (retry until it
        #    answers); 2. seek there (no stored offset: the beginning); 3. assign them
        #    ourselves: librdkafka would otherwise start from Kafka's committed offsets.
        try:
            stored = self._retry(
                lambda: self.store.load_offsets(self.group, self.topic, parts), pollable=False
            )
        except AbandonedError:
            # Stopping while Postgres is down: take nothing, consume nothing.
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)
            return
        tps = [
            TopicPartition(tp.topic, tp.partition, stored.get(tp.partition, OFFSET_BEGINNING))
            for tp in partitions
        ]
        consumer.incremental_assign(tps)
        self._owned.update(parts)
        log.info(
            "assigned %s partitions of %s: %s",
            len(tps),
            self.topic,
            {tp.partition: stored.get(tp.partition, "beginning") for tp in tps},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        # Finish the in-flight batches while we still own their partitions (the one the
        # writer has, then the one being gathered); if Postgres does not take them now,
        # forget the revoked partitions' records instead: their stored offsets did not
        # move, so the next owner reads them again.
        self._settle_or_requeue()
        if any(_key(i)[0] in parts for i in self._batch) and not self._flushing:
            try:
                self._flush(max_attempts=1)
            except (RetryableError, AbandonedError) as e:
                log.warning("revoke: batch not committed (%s); dropping revoked records", e)
        self._drop_partitions(parts)
        consumer.incremental_unassign(partitions)
        log.info("revoked partitions %s of %s", sorted(parts), self.topic)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        self._settle_or_requeue()
        self._drop_partitions(parts)
        consumer.incremental_unassign(partitions)
        log.warning("lost partitions %s of %s", sorted(parts), self.topic)

    def _drop_partitions(self, parts: set[int]) -> None:
        kept = [i for i in self._batch if _key(i)[0] not in parts]
        # The values' sizes are not kept per record: assume the dropped ones were average.
        if self._batch:
            self._batch_bytes = self._batch_bytes * len(kept) // len(self._batch)
        self._batch = kept
        self._owned -= parts
        for p in parts:
            # A gauge that was never set for this partition has nothing to remove.
            with contextlib.suppress(KeyError):
                m.LAG.remove(self.group, self.topic, str(p))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Kafka commits only feed lag monitoring; Postgres holds the real cursor.
        if err is not None:
            log.info("kafka offset commit (monitoring only) failed: %s", err)

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka: %s", err)

    # -- batches ---------------------------------------------------------------------------

    def _flush_or_abandon(self, *, pipelined: bool = False) -> None:
        try:
            if pipelined and self._submit():
                return
            # Not pipelined (stopping, or the previous write failed and its records are
            # back in the batch): settle everything in the foreground, with retries.
            self._settle_or_requeue()
            if self._batch:
                self._flush()
        except AbandonedError as e:
            log.warning("stopping: %s", e)
            self._clear_batch()

    def _submit(self) -> bool:
        """Hand the batch to the writer thread; False when the foreground must take it."""
        # 1. The previous batch commits first: offsets only move in order. If it failed,
        #    its records are put back in front of this batch for the foreground retry.
        #    (This batch was decoded record by record as it was consumed, while the
        #    writer was busy with the previous one.)
        if not self._settle_or_requeue():
            return False
        items = self._batch
        # 2. Poison is dead-lettered (and confirmed) before its offset can move. If Kafka
        #    does not confirm, the foreground retries the batch with backoff.
        try:
            self._send_poison(items)
        except RetryableError as e:
            log.warning("batch of %s not committed (%s): retrying it", len(items), e)
            m.RETRIES.labels(self.group).inc()
            self.totals.retries += 1
            return False
        # 3. Rows and the offsets of every partition in the batch, in one transaction,
        #    on the writer thread.
        rows = _rows(items)
        offsets = _next_offsets(items)
        self._writer.submit(
            items,
            _Summary.of(items, self._batch_bytes),
            functools.partial(
                self.store.write_batch,
                group=self.group,
                topic=self.topic,
                rows=rows,
                next_offsets=offsets,
            ),
        )
        self._clear_batch()
        return True

    def _clear_batch(self) -> None:
        self._batch = []
        self._batch_bytes = 0

    def _settle_or_requeue(self) -> bool:
        """Wait for the write in flight and account for it; return False if it failed.

        A failed write's records go back in front of the batch being gathered (the
        consumer has moved past them), to be retried in the foreground. ConfigError and
        anything unexpected is raised.
        """
        inflight = self._writer.take()
        if inflight is None:
            return True
        try:
            result = inflight.future.result()
        except (RetryableError, PoisonError) as e:
            log.warning("batch of %s not committed (%s): retrying it", len(inflight.items), e)
            if isinstance(e, RetryableError):
                m.RETRIES.labels(self.group).inc()
                self.totals.retries += 1
            if not self._batch:
                self._batch_started = time.monotonic()
            self._batch = [*inflight.items, *self._batch]
            self._batch_bytes += inflight.summary.value_bytes
            return False
        self._account(inflight, result)
        return True

    def _account(
        self, inflight: InFlight[Item, _Summary, BatchResult], result: BatchResult
    ) -> None:
        summary = inflight.summary
        m.BATCH_SIZE.labels(self.group).observe(summary.records)
        m.BATCH_SECONDS.labels(self.group).observe(time.monotonic() - inflight.submitted)
        self._count(summary, result)
        self._kafka_commit(inflight.items)
        self._dead_sent.difference_update(summary.poison)
        self.totals.batches += 1
        log.debug("batch of %s: %s", summary.records, result)

    def _flush(self, *, max_attempts: int | None = None) -> None:
        """Commit the in-flight batch, retrying with backoff (bounded by max_attempts)."""
        self._flushing = True
        try:
            started = time.monotonic()
            size = len(self._batch)
            result = self._retry(self._attempt, max_attempts=max_attempts)
        finally:
            self._flushing = False
        m.BATCH_SIZE.labels(self.group).observe(size)
        m.BATCH_SECONDS.labels(self.group).observe(time.monotonic() - started)
        self._kafka_commit(self._batch)
        self._clear_batch()
        self._dead_sent.clear()
        self.totals.batches += 1
        log.debug("batch of %s: %s", size, result)

    def _attempt(self) -> BatchResult:
        # The batch may have shrunk since the last attempt (a revoke during backoff),
        # so every attempt starts from the current batch.
        items = list(self._batch)
        # 1. Poison first: dead letters are confirmed by Kafka before any offset moves
        #    past them.
        self._send_poison(items)
        # 2. Rows and the offsets of every partition in the batch, in one transaction.
        result = self._write(items)
        # 3. Counters only after the commit, so retries do not count twice.
        self._count(_Summary.of(items, self._batch_bytes), result)
        return result

    def _send_poison(self, items: Sequence[Item]) -> None:
        poison = [i for i in items if isinstance(i, Poison)]
        self._dlq.send([p for p in poison if _key(p) not in self._dead_sent])
        self._dead_sent.update(_key(p) for p in poison)

    def _count(self, summary: _Summary, result: BatchResult) -> None:
        dead = summary.records - summary.good
        self.totals.records += summary.records
        self.totals.inserted += result.inserted
        self.totals.dead_letters += dead
        m.EVENTS_IN.labels(self.group).inc(summary.records)
        m.EVENTS_INSERTED.labels(self.group).inc(result.inserted)
        m.CONVERSATION_CHANGES.labels(self.group).inc(result.conversations_changed)
        m.UPGRADES.labels(self.group).inc(result.upgraded)
        m.DUPLICATES.labels(self.group).inc(max(0, result.staged - result.inserted))
        m.DEAD_LETTERS.labels(self.group).inc(dead)

    def _write(self, items: list[Item]) -> BatchResult:
        try:
            return self.store.write_batch(
                group=self.group,
                topic=self.topic,
                rows=_rows(items),
                next_offsets=_next_offsets(items),
            )
        except PoisonError as e:
            # Some row slipped past validation and Postgres refused it: find it by
            # halving (each half commits its own rows and offsets), dead-letter it alone.
            if len(items) == 1:
                only = items[0]
                # Once per batch: when a retryable error ends an attempt after this
                # letter was confirmed, the retry finds the same row refused again.
                if _key(only) not in self._dead_sent:
                    # A RetryableError here (Kafka slow to answer) retries the batch.
                    pos = _position(only)
                    original = _read_record(self.settings, self.group, pos)
                    reason = str(e)
                    if original is None:
                        original = (None, None)
                        reason += " (the original record is no longer in Kafka)"
                    poison = Poison(pos, *original, reason, type(e).__name__)
                    self._dlq.send([poison])
                    self._dead_sent.add(_key(only))
                    self.totals.dead_letters += 1
                    m.DEAD_LETTERS.labels(self.group).inc()
                return self.store.write_batch(
                    group=self.group,
                    topic=self.topic,
                    rows=[],
                    next_offsets=_next_offsets(items),
                )
            half = len(items) // 2
            a = self._write(items[:half])
            b = self._write(items[half:])
            return BatchResult(
                a.staged + b.staged,
                a.inserted + b.inserted,
                a.conversations_changed + b.conversations_changed,
                a.upgraded + b.upgraded,
            )

    def _retry(
        self,
        action: Callable[[], T],
        *,
        max_attempts: int | None = None,
        pollable: bool = True,
    ) -> T:
        """Run ``action`` until it stops raising RetryableError, backing off in between.

        Raises :class:`AbandonedError` when stopping (or out of attempts) before it succeeded.
        """
        delay = self.config.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                return action()
            except RetryableError as e:
                m.RETRIES.labels(self.group).inc()
                self.totals.retries += 1
                if self.stopping or (max_attempts is not None and attempt >= max_attempts):
                    raise AbandonedError(f"gave up after {attempt} attempt(s): {e}") from e
                log.warning("retrying in %.1fs: %s", delay, e)
                self._backoff(delay, pollable=pollable)
                delay = min(delay * 2, self.config.backoff_max)

    def _backoff(self, delay: float, *, pollable: bool) -> None:
        # Retrying an outage is a live loop (/healthz); the lag says it makes no progress.
        m.HEARTBEAT.beat("retrying")
        consumer = self._consumer
        if not pollable or consumer is None or not self._flushing:
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                self._stop.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            return
        # Keep serving the group (rebalances, liveness) while Postgres is away: pause
        # fetching and poll. A record that was already fetched is kept for later.
        assignment = consumer.assignment()
        consumer.pause(assignment)
        try:
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                msg = consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    # A fatal error (this static member fenced) ends the loop here too;
                    # until 2026-11-29 backoff dropped every polled error.
                    self._on_record_error(err)
                elif msg.partition() in self._owned:
                    self._take(msg)
        finally:
            consumer.resume(consumer.assignment())

    def _kafka_commit(self, items: Sequence[Item]) -> None:
        consumer = self._consumer
        if consumer is None or not items:
            return
        offsets = _next_offsets(items)
        tps = [TopicPartition(self.topic, p, n) for p, n in offsets.items() if p in self._owned]
        if not tps:
            return
        try:
            consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as e:
            log.info("kafka offset commit (monitoring only) failed: %s", e)

    def _refresh_lag(self, consumer: Consumer) -> None:
        for p in sorted(self._owned):
            tp = TopicPartition(self.topic, p)
            try:
                # Monitoring on the poll thread: one quick try, no settling retries.
                _low, high = consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                (pos,) = consumer.position([tp])
            except KafkaException as e:
                log.info("lag of %s[%s] unknown: %s", self.topic, p, e)
                continue
            if pos.offset >= 0:
                m.LAG.labels(self.group, self.topic, str(p)).set(max(0, high - pos.offset))


def _key(item: Item) -> tuple[int, int]:
    """(partition, offset) of a batch item."""
    if isinstance(item, Poison):
        return (item.position.partition, item.position.offset)
    return (item[_PARTITION], item[_OFFSET])


def _position(item: Item) -> Position:
    if isinstance(item, Poison):
        return item.position
    return Position(item[_TOPIC], item[_PARTITION], item[_OFFSET])


def _rows(items: Sequence[Item]) -> list[StageRow]:
    return [i for i in items if not isinstance(i, Poison)]


def _next_offsets(items: Sequence[Item]) -> dict[int, int]:
    out: dict[int, int] = {}
    for item in items:
        p, offset = _key(item)
        if offset >= out.get(p, 0):
            out[p] = offset + 1
    return out


def _read_record(
    settings: Settings, group: str, pos: Position, timeout: float = 10.0
) -> tuple[bytes | None, bytes | None] | None:
    """Return the key and value of the record at ``pos``, read from Kafka again, or
    None when Kafka no longer has it (retention deleted it meanwhile).

    The batch keeps decoded rows, not the records' bytes; a row Postgres refuses (rare:
    it passed validation) is dead-lettered with its original bytes, read back here by a
    short-lived consumer that assigns the one partition (no group membership, no
    commits). Raises :class:`RetryableError` when Kafka does not return it in time.
    """
    reader = make_consumer(settings, f"{group}.dlq-reader")
    try:
        reader.assign([TopicPartition(pos.topic, pos.partition, pos.offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = reader.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None or msg.error() is not None:
                continue
            # The first record at or after the position: a later one means it is gone.
            return (msg.key(), msg.value()) if msg.offset() == pos.offset else None
    finally:
        reader.close()
    raise RetryableError(f"record {pos.topic}[{pos.partition}]@{pos.offset} not read in time")


def _list_topic(consumer: Consumer, topic: str) -> list[int]:
    try:
        md = consumer.list_topics(topic, timeout=5)
    except KafkaException as e:
        raise RetryableError(f"cannot list topic {topic}: {e}") from e
    info = md.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise RetryableError(f"topic {topic} not available: {info.error if info else 'absent'}")
    return sorted(info.partitions)


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    try:
        low, high = read_watermarks(consumer, TopicPartition(topic, partition), timeout=5)
    except KafkaException as e:
        raise RetryableError(f"cannot read end offsets of {topic}[{partition}]: {e}") from e
    return int(low), int(high)
