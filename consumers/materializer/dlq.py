"""Dead letters: poison records go to ``<prefix>.dlq``, confirmed before offsets move.

A letter is bounded in size (:func:`schemas.records.dead_letter`): a poison record near
Kafka's record limit gets a letter with a marked prefix of its value, so the letter is
always accepted and the materializer moves past the record. If Kafka still refuses a
letter as too large (a DLQ topic configured with a lower ``max.message.bytes``), it is
sent again without any copy of the key or value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from consumers.materializer.rows import Position
from convsync.errors import RetryableError
from convsync.kafka import ClientConfig, make_producer
from schemas.records import Letter, dead_letter

log = logging.getLogger(__name__)

COMPONENT: Final = "materializer"
# Kafka's answers to a record over a size limit (the producer's or the topic's).
_TOO_LARGE: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


@dataclass(frozen=True, slots=True)
class Poison:
    """One record that will never materialize, with why."""

    position: Position
    key: bytes | None
    value: bytes | None
    reason: str
    error_type: str

    def dead_letter(self, *, copies: bool = True) -> Letter:
        """Return the record published on the dead-letter topic (bounded in size)."""
        return dead_letter(
            component=COMPONENT,
            topic=self.position.topic,
            partition=self.position.partition,
            offset=self.position.offset,
            key=self.key,
            value=self.value,
            reason=self.reason,
            error_type=self.error_type,
            failed_at=int(time.time() * 1000),
            copies=copies,
        )


class DeadLetterSink:
    """An idempotent acks=all producer for the dead-letter topic; created on first use."""

    def __init__(self, kafka: ClientConfig, topic: str) -> None:
        self._kafka = kafka
        self.topic = topic
        self._producer: Producer | None = None

    def send(self, poison: list[Poison], *, timeout: float = 10.0) -> None:
        """Publish ``poison`` and wait until Kafka confirmed every record.

        Raises :class:`RetryableError` when a record is not confirmed in ``timeout``
        seconds; sending the same records again is safe (the DLQ is at-least-once).
        """
        if not poison:
            return
        refused = self._send(poison, copies=True, timeout=timeout)
        if refused:
            # Too large even bounded: where to find the original is enough.
            log.warning(
                "%d dead letters refused as too large; sending them without copies", len(refused)
            )
            if self._send(refused, copies=False, timeout=timeout):
                raise RetryableError("dead letters refused as too large even without copies")
        for p in poison:
            log.warning(
                "dead-lettered %s[%s]@%s: %s",
                p.position.topic,
                p.position.partition,
                p.position.offset,
                p.reason,
            )

    def _send(self, poison: list[Poison], *, copies: bool, timeout: float) -> list[Poison]:
        """Produce and flush; return the records Kafka refused as too large."""
        if self._producer is None:
            self._producer = make_producer(self._kafka, **{"message.timeout.ms": 30_000})
        failures: list[KafkaError] = []
        too_large: list[Poison] = []

        def on_delivery(p: Poison) -> Any:
            def done(err: KafkaError | None, _msg: Any) -> None:
                if err is None:
                    return
                if err.code() in _TOO_LARGE:
                    too_large.append(p)
                else:
                    failures.append(err)

            return done

        try:
            for p in poison:
                letter = p.dead_letter(copies=copies)
                headers: list[tuple[str, str | bytes | None]] = list(letter.headers)
                try:
                    self._producer.produce(
                        self.topic,
                        letter.value,
                        key=letter.key,
                        headers=headers,
                        on_delivery=on_delivery(p),
                    )
                except KafkaException as e:
                    # Over the producer's own message.max.bytes: refused before sending.
                    if e.args[0].code() not in _TOO_LARGE:
                        raise
                    too_large.append(p)
        except (KafkaException, BufferError) as e:
            raise RetryableError(f"cannot queue dead letters: {e}") from e
        left = self._producer.flush(timeout)
        if left or failures:
            raise RetryableError(
                f"dead letters not confirmed ({left} pending, errors: {failures[:3]})"
            )
        return too_large

    def close(self) -> None:
        """Flush what is pending and drop the producer."""
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


class DeadLetters:
    """The dead letters of the batch in hand, each sent once.

    A batch may be attempted several times (retries, the bisection of a row Postgres
    refuses); a record whose letter Kafka confirmed is not sent again until its batch is
    committed (:meth:`forget`), so the topic gets one letter per poison record.
    """

    def __init__(self, sink: DeadLetterSink) -> None:
        self.sink = sink
        # (partition, offset) of the records whose letters Kafka confirmed.
        self._sent: set[tuple[int, int]] = set()

    def sent(self, key: tuple[int, int]) -> bool:
        """Return whether the letter of the record at (partition, offset) was sent."""
        return key in self._sent

    def send(self, poison: Iterable[Poison]) -> None:
        """Send the letters of ``poison`` not sent yet and wait for Kafka to confirm.

        Raises :class:`RetryableError` when Kafka does not confirm them.
        """
        poison = list(poison)
        self.sink.send([p for p in poison if _key(p) not in self._sent])
        self._sent.update(_key(p) for p in poison)

    def forget(self, keys: Iterable[tuple[int, int]] | None = None) -> None:
        """Forget the letters of a committed batch's ``keys`` (None: every letter)."""
        if keys is None:
            self._sent.clear()
        else:
            self._sent.difference_update(keys)


def _key(poison: Poison) -> tuple[int, int]:
    return (poison.position.partition, poison.position.offset)
