"""Dead letters: poison records go to ``<prefix>.dlq``, confirmed before offsets move."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from consumers.materializer.rows import Position
from convsync.errors import RetryableError
from convsync.kafka import make_producer
from convsync.settings import Settings
from schemas.records import DeadLetter

log = logging.getLogger(__name__)

COMPONENT = "materializer"


@dataclass(frozen=True, slots=True)
class Poison:
    """One record that will never materialize, with why."""

    position: Position
    key: bytes | None
    value: bytes | None
    reason: str
    error_type: str

    def dead_letter(self) -> DeadLetter:
        """Return the record published on the dead-letter topic."""
        return DeadLetter(
            reason=self.reason,
            error_type=self.error_type,
            component=COMPONENT,
            topic=self.position.topic,
            partition=self.position.partition,
            offset=self.position.offset,
            key_b64=DeadLetter.encode_bytes(self.key),
            value_b64=DeadLetter.encode_bytes(self.value),
            failed_at=int(time.time() * 1000),
        )


class DeadLetterSink:
    """An idempotent acks=all producer for ``<prefix>.dlq``; created on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.topic = settings.topic("dlq")
        self._producer: Producer | None = None

    def send(self, poison: list[Poison], *, timeout: float = 10.0) -> None:
        """Publish ``poison`` and wait until Kafka confirmed every record.

        Raises :class:`RetryableError` when a record is not confirmed in ``timeout``
        seconds; sending the same records again is safe (the DLQ is at-least-once).
        """
        if not poison:
            return
        if self._producer is None:
            self._producer = make_producer(self._settings, **{"message.timeout.ms": 30_000})
        failures: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                failures.append(err)

        try:
            for p in poison:
                self._producer.produce(
                    self.topic, p.dead_letter().to_bytes(), key=p.key, on_delivery=on_delivery
                )
        except (KafkaException, BufferError) as e:
            raise RetryableError(f"cannot queue dead letters: {e}") from e
        left = self._producer.flush(timeout)
        if left or failures:
            raise RetryableError(
                f"dead letters not confirmed ({left} pending, errors: {failures[:3]})"
            )
        for p in poison:
            log.warning(
                "dead-lettered %s[%s]@%s: %s",
                p.position.topic,
                p.position.partition,
                p.position.offset,
                p.reason,
            )

    def close(self) -> None:
        """Flush what is pending and drop the producer."""
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
