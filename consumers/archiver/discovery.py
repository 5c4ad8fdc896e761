"""How the archiver learns of attachments: it reads ``<prefix>.events`` itself.

The archiver is the only member of its reading (one archiver per schema holds the lock),
so it assigns itself every partition, starting from the offsets stored in Postgres with
its rows (``consumer_offsets``, group ``convsync-archiver``): the rows of a batch and the
offsets past it commit together, and ``convsync status`` shows the archiver's lag like
any other group's. Records without ``"attachments"`` in their bytes are passed over
without being parsed. Methods block: the engine runs them in a worker thread.
"""

from __future__ import annotations

import logging
from typing import Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from consumers.archiver import metrics
from consumers.archiver.extract import Attachment, attachments_of
from consumers.archiver.queue import ArchiveQueue
from convsync.errors import ConsumerFatalError, PoisonError, RetryableError
from convsync.kafka import is_fatal, make_consumer, read_watermarks
from convsync.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_GROUP: Final = "convsync-archiver"


class Discovery:
    """The events topic, read from the archiver's stored offsets into its queue."""

    def __init__(
        self, settings: Settings, queue: ArchiveQueue, *, group: str, batch: int = 500
    ) -> None:
        self.topic = settings.topic("events")
        self.queue = queue
        self.group = group
        self.batch = batch
        # Records held at once: one batch, plus librdkafka's prefetch queue (capped).
        self._consumer: Consumer = make_consumer(
            settings, group, **{"queued.max.messages.kbytes": 16384}
        )
        self._positions: dict[int, int] = {}

    def start(self) -> None:
        """Assign every partition at its stored offset (the beginning when none).

        Raises :class:`RetryableError` when Kafka or Postgres does not answer.
        """
        try:
            md = self._consumer.list_topics(self.topic, timeout=10)
        except KafkaException as e:
            raise RetryableError(f"Kafka: cannot list {self.topic}: {e}") from e
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RetryableError(f"Kafka: topic {self.topic} not found")
        stored = self.queue.load_offsets(self.group, self.topic)
        self._positions = {p: stored.get(p, -1) for p in topic.partitions}
        self._consumer.assign(
            [
                TopicPartition(self.topic, p, stored.get(p, OFFSET_BEGINNING))
                for p in sorted(topic.partitions)
            ]
        )
        log.info("reading %s from %s", self.topic, stored or "the beginning")

    def step(self, timeout: float = 0.5) -> int:
        """Read up to one batch, record its attachments and offsets; return records read.

        Raises :class:`RetryableError` (Postgres down: the engine starts over from the
        stored offsets) or :class:`ConsumerFatalError`.
        """
        msgs = self._consumer.consume(num_messages=self.batch, timeout=timeout)
        found: list[Attachment] = []
        next_offsets: dict[int, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if is_fatal(err):
                    raise ConsumerFatalError(f"consumer failed fatally: {err}")
                log.warning("consumer: %s", err)
                continue
            try:
                got = attachments_of(msg.value() or b"")
            except PoisonError as e:
                # The materializer dead-letters this record: nothing stored to archive.
                metrics.RECORDS.labels("unreadable").inc()
                log.warning(
                    "record %s[%s]@%s skipped: %s", self.topic, msg.partition(), msg.offset(), e
                )
            else:
                metrics.RECORDS.labels("with_attachments" if got else "without").inc()
                found.extend(got)
            partition, offset = msg.partition(), msg.offset()
            if partition is not None and offset is not None:
                next_offsets[partition] = offset + 1
        if next_offsets:
            self.queue.discover(
                found, group=self.group, topic=self.topic, next_offsets=next_offsets
            )
            self._positions.update(next_offsets)
        return len(msgs)

    def caught_up(self) -> bool:
        """Return whether every partition was read to its end (as of now)."""
        for p, position in self._positions.items():
            try:
                low, high = read_watermarks(
                    self._consumer, TopicPartition(self.topic, p), timeout=10
                )
            except KafkaException as e:
                raise RetryableError(f"Kafka: watermarks of {self.topic}[{p}]: {e}") from e
            if max(position, low) < high:
                return False
        return True

    def close(self) -> None:
        """Leave the topic."""
        self._consumer.close()
