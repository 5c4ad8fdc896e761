"""Committing a batch: dead letters confirmed, rows and offsets in one Postgres
transaction, then offsets to Kafka for monitoring, in that order."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence

from confluent_kafka import TopicPartition

from consumers.materializer.batch import Batch, Item, Summary, key, next_offsets, position, rows
from consumers.materializer.bisection import write_bisecting
from consumers.materializer.config import MaterializerConfig
from consumers.materializer.dlq import DeadLetters, Poison
from consumers.materializer.member import Member
from consumers.materializer.metrics import Tally
from consumers.materializer.retry import Retry
from consumers.materializer.rows import StageRow
from consumers.materializer.store import BatchResult, Store
from consumers.materializer.writer import BackgroundWriter
from convsync.errors import PoisonError, RetryableError
from convsync.kafka import read_record

log = logging.getLogger(__name__)


class Checkpoint:
    """Takes gathered batches to Postgres, exactly once and in offset order.

    A batch goes through these steps (numbered where they happen below):

    1. its records were decoded as they were consumed (:meth:`Batch.add`);
    2. the previous batch's write is settled first, so offsets only move in order; if
       it failed, its records go back in front of this batch;
    3. its poison records are dead-lettered and Kafka confirms the letters before any
       offset can move past them;
    4. its rows and the next offset of every partition in it are written together, one
       transaction per part (:class:`Store`): on the writer thread (:meth:`submit`),
       or in the foreground with retries and bisection (:meth:`commit`);
    5. once the write is settled, the same offsets are committed to Kafka, for lag
       monitoring only.

    At most one write is in flight and it is settled before the next is submitted.
    """

    def __init__(
        self,
        *,
        config: MaterializerConfig,
        store: Store,
        letters: DeadLetters,
        member: Member,
        retry: Retry,
        tally: Tally,
    ) -> None:
        self._kafka = config.kafka
        self._group = config.group
        self._topic = config.events_topic
        self.store = store
        self.letters = letters
        self._member = member
        self._retry = retry
        self._tally = tally
        self._writer: BackgroundWriter[Item, Summary, BatchResult] = BackgroundWriter()
        self._committing = False

    @property
    def writing(self) -> bool:
        """True while a write runs on the writer thread."""
        return self._writer.busy

    @property
    def written(self) -> bool:
        """True when a write on the writer thread finished and waits to be settled."""
        return self._writer.done

    @property
    def committing(self) -> bool:
        """True while :meth:`commit` runs (a rebalance callback may run inside it)."""
        return self._committing

    def submit(self, batch: Batch) -> bool:
        """Hand the batch to the writer thread and empty it.

        Returns False when the foreground must take it instead (the previous write
        failed, or Kafka did not confirm the dead letters): the batch is then kept.
        """
        # 2. The previous batch commits first. If it failed, its records are put back in
        #    front of this batch for the foreground retry.
        if not self.settle(batch):
            return False
        items = batch.items
        # 3. Poison is dead-lettered (and confirmed) before its offset can move. If
        #    Kafka does not confirm, the foreground retries the batch with backoff.
        try:
            self.letters.send(i for i in items if isinstance(i, Poison))
        except RetryableError as e:
            log.warning("batch of %s not committed (%s): retrying it", len(items), e)
            self._tally.retried()
            return False
        # 4. Rows and the offsets of every partition in the batch, in one transaction
        #    (per part), on the writer thread.
        write = functools.partial(
            self.store.write_batch,
            group=self._group,
            topic=self._topic,
            rows=rows(items),
            next_offsets=next_offsets(items),
        )
        self._writer.submit(items, Summary.of(items, batch.value_bytes), write)
        batch.clear()
        return True

    def settle(self, batch: Batch) -> bool:
        """Wait for the write in flight and account for it; return False if it failed.

        A failed write's records go back in front of ``batch`` (the consumer has moved
        past them), to be retried in the foreground. ConfigError and anything
        unexpected is raised.
        """
        inflight = self._writer.take()
        if inflight is None:
            return True
        try:
            result = inflight.future.result()
        except (RetryableError, PoisonError) as e:
            log.warning("batch of %s not committed (%s): retrying it", len(inflight.items), e)
            if isinstance(e, RetryableError):
                self._tally.retried()
            batch.put_back(inflight.items, inflight.summary.value_bytes)
            return False
        summary = inflight.summary
        self._tally.applied(summary.records, summary.good, result)
        # 5. Kafka learns the offsets Postgres holds now.
        self._member.commit(next_offsets(inflight.items))
        self.letters.forget(summary.poison)
        self._tally.committed(summary.records, time.monotonic() - inflight.submitted)
        log.debug("batch of %s: %s", summary.records, result)
        return True

    def commit(self, batch: Batch, *, max_attempts: int | None = None) -> None:
        """Commit the batch in the foreground and empty it.

        Retries with backoff (bounded by ``max_attempts``), serving the consumer group
        while it waits; a row Postgres refuses is found by bisection and dead-lettered.
        Raises AbandonedError when stopping (or out of attempts) first.
        """
        self._committing = True
        try:
            started = time.monotonic()
            size = len(batch)
            result = self._retry(
                lambda: self._attempt(batch), max_attempts=max_attempts, wait=self._member.serve
            )
        finally:
            self._committing = False
        # 5. Kafka learns the offsets Postgres holds now.
        self._member.commit(next_offsets(batch.items))
        batch.clear()
        self.letters.forget()
        self._tally.committed(size, time.monotonic() - started)
        log.debug("batch of %s: %s", size, result)

    def _attempt(self, batch: Batch) -> BatchResult:
        # The batch may have changed since the last attempt (records taken while
        # serving the group, a revoke during backoff): every attempt starts from it.
        items = list(batch.items)
        # 3. Poison first: dead letters are confirmed by Kafka before any offset moves
        #    past them.
        self.letters.send(i for i in items if isinstance(i, Poison))
        # 4. Rows and the offsets of every partition in the batch, in one transaction
        #    (per part); a refused row is bisected out.
        result = write_bisecting(items, self._write, self._refused)
        # Counters only after the commit, so retries do not count twice.
        summary = Summary.of(items, batch.value_bytes)
        self._tally.applied(summary.records, summary.good, result)
        return result

    def _write(self, staged: Sequence[StageRow], offsets: Mapping[int, int]) -> BatchResult:
        return self.store.write_batch(
            group=self._group, topic=self._topic, rows=staged, next_offsets=offsets
        )

    def _refused(self, item: Item, error: PoisonError) -> None:
        """Dead-letter the one record whose row Postgres refused, with its original
        bytes read back from Kafka (the batch keeps rows, not records)."""
        # Once per batch: when a retryable error ends an attempt after this letter was
        # confirmed, the retry finds the same row refused again.
        if self.letters.sent(key(item)):
            return
        pos = position(item)
        # A RetryableError here (Kafka slow to answer) retries the batch.
        original = read_record(
            self._kafka,
            TopicPartition(pos.topic, pos.partition, pos.offset),
            group=f"{self._group}.dlq-reader",
        )
        reason = str(error)
        if original is None:
            original = (None, None)
            reason += " (the original record is no longer in Kafka)"
        self.letters.send([Poison(pos, *original, reason, type(error).__name__)])
        self._tally.dead_lettered()

    def close(self) -> None:
        """Wait for the write in flight (its outcome is not read) and stop the writer
        thread."""
        self._writer.close()
