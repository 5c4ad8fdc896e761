"""The materializer loop: Kafka records in, one Postgres transaction per batch out."""

from __future__ import annotations

import functools
import logging
import threading

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumers.materializer import metrics as m
from consumers.materializer.batch import Batch
from consumers.materializer.checkpoint import Checkpoint
from consumers.materializer.config import DEFAULT_GROUP, BatchConfig, MaterializerConfig
from consumers.materializer.dlq import DeadLetters, DeadLetterSink
from consumers.materializer.member import Member
from consumers.materializer.metrics import Tally, Totals
from consumers.materializer.rebalance import Rebalance
from consumers.materializer.retry import AbandonedError, Retry, Stop
from consumers.materializer.store import Store
from convsync.kafka import check_record_error, list_partitions, watermarks
from convsync.settings import Settings

__all__ = ["DEFAULT_GROUP", "Materializer", "Totals"]

log = logging.getLogger(__name__)


class Materializer:
    """Projects the events topic into a Postgres schema, exactly once.

    Use :meth:`run` for a consumer-group member (``convsync materialize``) and
    :meth:`run_to_end` to read every partition from the beginning to its current end
    (``convsync replay``). :meth:`stop` may be called from any thread or a signal
    handler.

    The loop gathers records into a :class:`Batch` while the :class:`Checkpoint`
    writes the previous one on its writer thread; a :class:`Member` is its consumer,
    :class:`Rebalance` its group callbacks, :class:`Retry` how it waits out outages.
    """

    def __init__(self, config: MaterializerConfig) -> None:
        self.config = config
        self.tally = Tally(config.group)
        self.totals: Totals = self.tally.totals
        self.store = Store(config.database_url, config.schema, writers=config.batch.writers)
        self.dlq = DeadLetterSink(config.kafka, config.dlq_topic)
        self.batch = Batch()
        self._stop = Stop()
        self.member = Member(config, self.tally, self._stop, self.batch.add)
        retry = Retry(
            initial=config.batch.backoff_initial,
            maximum=config.batch.backoff_max,
            stop=self._stop,
            on_retry=self.tally.retried,
        )
        self._retry = retry
        self.checkpoint = Checkpoint(
            config=config,
            store=self.store,
            letters=DeadLetters(self.dlq),
            member=self.member,
            retry=retry,
            tally=self.tally,
        )
        self.rebalance = Rebalance(
            config=config,
            store=self.store,
            batch=self.batch,
            checkpoint=self.checkpoint,
            member=self.member,
            retry=retry,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        group: str = DEFAULT_GROUP,
        schema: str | None = None,
        batch: BatchConfig | None = None,
        instance_id: str | None = None,
        report_lag: bool = False,
    ) -> Materializer:
        """Return a materializer of ``settings``' stack (see
        :meth:`MaterializerConfig.from_settings`)."""
        return cls(
            MaterializerConfig.from_settings(
                settings,
                group=group,
                schema=schema,
                batch=batch,
                instance_id=instance_id,
                report_lag=report_lag,
            )
        )

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit it and close."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or the ``stop`` event given to run is set)."""
        return self._stop.is_set()

    # -- the two ways to run ---------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None) -> Totals:
        """Consume as a member of the group until stopped; return the totals.

        Raises ConfigError when the schema is not migrated, ConsumerFatalError when the
        consumer is fenced (a new one may rejoin); Postgres and Kafka outages are
        retried with backoff, never raised.
        """
        self._stop.outside = stop
        consumer = self.member.open()
        consumer.subscribe(
            [self.config.events_topic],
            on_assign=self.rebalance.on_assign,
            on_revoke=self.rebalance.on_revoke,
            on_lost=self.rebalance.on_lost,
        )
        try:
            while not self.stopping:
                m.HEARTBEAT.beat("consuming")
                self._poll_once(consumer)
            self._commit()
        finally:
            self._close()
        return self.totals

    def run_to_end(self) -> Totals:
        """Read every partition from its first record to the end it has now, then stop.

        Uses manual assignment (no group membership); offsets are still written to
        ``consumer_offsets`` under this materializer's group. Returns the totals.
        """
        consumer = self.member.open()
        topic = self.config.events_topic
        try:
            ends: dict[int, int] = {}
            for p in self._retry(lambda: list_partitions(consumer, topic)):
                low, high = self._retry(functools.partial(watermarks, consumer, topic, p))
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            self.member.owned = set(ends)
            read_to = self.batch.read_to
            while not self.stopping:
                if all(read_to.get(p, -1) >= end for p, end in ends.items()):
                    break
                self._poll_once(consumer)
            self._commit()
        finally:
            self._close()
        return self.totals

    # -- the loop --------------------------------------------------------------------------

    def _poll_once(self, consumer: Consumer) -> None:
        cfg = self.config.batch
        timeout, want = self.batch.next_poll(cfg, writer_busy=self.checkpoint.writing)
        for msg in consumer.consume(num_messages=want, timeout=timeout):
            err = msg.error()
            if err is not None:
                check_record_error(err)
                continue
            self.batch.add(msg)
        if self.batch.due(cfg, writer_busy=self.checkpoint.writing):
            self._commit(pipelined=True)
        elif self.checkpoint.written and not self.checkpoint.settle(self.batch):
            # The write failed and its records are back in the batch: retry them now in
            # the foreground (backoff, bisection of a refused row), never on the writer
            # thread again, where a refused row would fail forever and an outage would
            # be retried at poll speed.
            self._commit()
        self.member.refresh_lag()

    def _commit(self, *, pipelined: bool = False) -> None:
        """Commit the batch: on the writer thread when ``pipelined`` and possible,
        otherwise in the foreground with retries. A batch abandoned because the loop is
        stopping is dropped: whoever resumes from the stored offsets reads it again."""
        try:
            if pipelined and self.checkpoint.submit(self.batch):
                return
            # Not pipelined (stopping, or the previous write failed and its records are
            # back in the batch): settle everything in the foreground, with retries.
            self.checkpoint.settle(self.batch)
            if self.batch:
                self.checkpoint.commit(self.batch)
        except AbandonedError as e:
            log.warning("stopping: %s", e)
            self.batch.clear()

    def _close(self) -> None:
        # A write still in flight here belongs to a failed loop: let it finish, keep
        # nothing of it (its offsets moved only if it committed).
        self.checkpoint.close()
        self.member.close()
        self.dlq.close()
        self.store.close()
