"""The materializer's side of Kafka: its consumer, the partitions it owns, and what it
tells Kafka (offset commits for monitoring, lag) or keeps telling it while it waits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumers.materializer.config import MaterializerConfig
from consumers.materializer.metrics import Tally
from consumers.materializer.retry import Stop
from convsync.ends import EndsProbe
from convsync.kafka import behind, check_record_error, make_consumer

log = logging.getLogger(__name__)

#: librdkafka settings of the materializer's consumer (the why of each beside it).
CONSUMER_TUNING: Final[Mapping[str, Any]] = {
    # librdkafka pre-fetches up to 64 MB by default; a few batches ahead is enough to
    # keep Postgres busy and keeps the process's RSS small.
    "queued.max.messages.kbytes": 8192,
    # Once that prefetch is full librdkafka pauses fetching for this long (default 1 s):
    # a drained queue would then sit idle up to a second.
    "fetch.queue.backoff.ms": 20,
    # A fetch response is buffered whole (default up to 50 MB, 1 MB per partition):
    # smaller ones leave room for larger batches in the same RSS. A record larger than
    # both is still fetched (alone).
    "fetch.max.bytes": 4 * 1024 * 1024,
    "max.partition.fetch.bytes": 256 * 1024,
}


class Member:
    """One consumer of the events topic and the partitions it owns now.

    Which partitions it owns is decided by the group (:mod:`rebalance`) or, for a
    replay, by manual assignment. Kafka's committed offsets are never used to resume
    (Postgres holds the cursor); they are committed here for lag monitoring only.
    """

    def __init__(
        self,
        config: MaterializerConfig,
        tally: Tally,
        stop: Stop,
        on_record: Callable[[Message], None],
    ) -> None:
        self._config = config
        self.topic = config.events_topic
        self._tally = tally
        self._stop = stop
        self._on_record = on_record
        self.consumer: Consumer | None = None
        self.owned: set[int] = set()
        self._last_lag = 0.0
        self._probe: EndsProbe | None = None

    def open(self) -> Consumer:
        """Create the consumer (not yet subscribed or assigned) and return it."""
        extra = {"group.instance.id": self._config.instance_id} if self._config.instance_id else {}
        self.consumer = make_consumer(
            self._config.kafka,
            self._config.group,
            on_commit=_on_commit,
            error_cb=_on_error,
            **CONSUMER_TUNING,
            **extra,
        )
        if self._config.report_lag and self._probe is None:
            self._probe = EndsProbe(
                self._config.kafka,
                self._config.group,
                (self.topic, self._config.dlq_topic),
                interval=self._config.batch.lag_interval,
                name="materializer-ends",
            )
        return self.consumer

    def close(self) -> None:
        """Leave the group and close the consumer."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as e:
            log.warning("consumer close: %s", e)

    def release(self, partitions: set[int]) -> None:
        """Forget ``partitions`` (revoked, lost): no more commits or lag for them."""
        self.owned -= partitions
        self._tally.forget_lag(self.topic, partitions, self._config.dlq_topic)

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit the next ``offsets`` of owned partitions to Kafka, asynchronously: for
        lag monitoring only (a failure is logged, never raised)."""
        consumer = self.consumer
        if consumer is None:
            return
        tps = [TopicPartition(self.topic, p, n) for p, n in offsets.items() if p in self.owned]
        if not tps:
            return
        try:
            consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as e:
            log.info("kafka offset commit (monitoring only) failed: %s", e)

    def refresh_lag(self) -> None:
        """Set the lag gauges of the owned partitions, at most every ``lag_interval``
        seconds and only when the config asks for it, from the end offsets the probe's
        thread last learned (no query to Kafka here: see convsync/ends.py)."""
        consumer, probe = self.consumer, self._probe
        if consumer is None or probe is None:
            return
        if time.monotonic() - self._last_lag < self._config.batch.lag_interval:
            return
        self._last_lag = time.monotonic()
        probe.want(self.owned)
        try:
            self._tally.lag(self.topic, behind(consumer, self.topic, probe.ends(self.topic)))
        except KafkaException as e:
            log.info("lag of %s unknown: %s", self.topic, e)
        self._tally.dlq_ends(self._config.dlq_topic, probe.ends(self._config.dlq_topic))

    def serve(self, seconds: float) -> None:
        """Wait ``seconds`` while staying in the group: fetching paused, the consumer
        polled so that rebalances and liveness are served.

        A record that was fetched before the pause goes to ``on_record`` (when its
        partition is still owned). Raises ConsumerFatalError when the consumer is
        fenced meanwhile.
        """
        consumer = self.consumer
        if consumer is None:
            self._stop.sleep(seconds)
            return
        consumer.pause(consumer.assignment())
        try:
            deadline = time.monotonic() + seconds
            while not self._stop.is_set() and time.monotonic() < deadline:
                msg = consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    check_record_error(err)
                elif msg.partition() in self.owned:
                    self._on_record(msg)
        finally:
            consumer.resume(consumer.assignment())


def _on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
    # Kafka commits only feed lag monitoring; Postgres holds the real cursor.
    if err is not None:
        log.info("kafka offset commit (monitoring only) failed: %s", err)


def _on_error(err: KafkaError) -> None:
    log.warning("kafka: %s", err)
