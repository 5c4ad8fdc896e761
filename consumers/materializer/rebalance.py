"""The consumer group's callbacks: assigned partitions resume from the offsets Postgres
holds; the batches of revoked partitions are committed if possible, of lost ones
dropped."""

from __future__ import annotations

import logging

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumers.materializer.batch import Batch
from consumers.materializer.checkpoint import Checkpoint
from consumers.materializer.config import MaterializerConfig
from consumers.materializer.member import Member
from consumers.materializer.retry import AbandonedError, Retry
from consumers.materializer.store import Store
from convsync.errors import RetryableError

log = logging.getLogger(__name__)


class Rebalance:
    """``on_assign``, ``on_revoke`` and ``on_lost`` of the materializer's subscription.

    The group uses cooperative-sticky assignment: each callback names only the
    partitions that move. Every callback first settles the write in flight (the store's
    connections are the writer's until then), so no write of a partition is in flight
    once the callback returns.
    """

    def __init__(
        self,
        *,
        config: MaterializerConfig,
        store: Store,
        batch: Batch,
        checkpoint: Checkpoint,
        member: Member,
        retry: Retry,
    ) -> None:
        self._group = config.group
        self._topic = config.events_topic
        self._store = store
        self._batch = batch
        self._checkpoint = checkpoint
        self._member = member
        self._retry = retry

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume the new partitions where Postgres says, never where Kafka does."""
        parts = [tp.partition for tp in partitions if tp.topic == self._topic]
        self._checkpoint.settle(self._batch)
        # 1. Read the resume cursor of the new partitions from Postgres (retry until it
        #    answers); 2. seek there (no stored offset: the beginning); 3. assign them
        #    ourselves: librdkafka would otherwise start from Kafka's committed offsets.
        try:
            stored = self._retry(lambda: self._store.load_offsets(self._group, self._topic, parts))
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
        self._member.owned.update(parts)
        log.info(
            "assigned %s partitions of %s: %s",
            len(tps),
            self._topic,
            {tp.partition: stored.get(tp.partition, "beginning") for tp in tps},
        )

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was gathered of the revoked partitions while they are still
        ours; if Postgres does not take it now, drop it: their stored offsets did not
        move, so the next owner reads those records again."""
        parts = {tp.partition for tp in partitions}
        # The write in flight first, then the batch being gathered (unless the revoke
        # comes while that batch is being committed: the commit goes on without them).
        self._checkpoint.settle(self._batch)
        if self._batch.holds_any(parts) and not self._checkpoint.committing:
            try:
                self._checkpoint.commit(self._batch, max_attempts=1)
            except (RetryableError, AbandonedError) as e:
                log.warning("revoke: batch not committed (%s); dropping revoked records", e)
        self._drop(parts)
        consumer.incremental_unassign(partitions)
        log.info("revoked partitions %s of %s", sorted(parts), self._topic)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop what was gathered of partitions another member may own already."""
        parts = {tp.partition for tp in partitions}
        self._checkpoint.settle(self._batch)
        self._drop(parts)
        consumer.incremental_unassign(partitions)
        log.warning("lost partitions %s of %s", sorted(parts), self._topic)

    def _drop(self, parts: set[int]) -> None:
        self._batch.drop(parts)
        self._member.release(parts)
