"""`convsync mapper`: deliveries -> events, exactly once, with Kafka transactions.

The second half of the webhook's ingestion (docs/gateway.md, "Route B"). A consumer of
``<prefix>.deliveries`` (group ``convsync-mapper``) and a transactional producer: every
batch's events (:func:`producers.webhook.deliveries.map_delivery`), its dead letters and
the consumed offsets are one Kafka transaction (``send_offsets_to_transaction``), so a
crash or a rebalance at any point gives every event once on ``<prefix>.events`` for
``read_committed`` readers (all of convsync's). Events are keyed by page as deliveries
are, by the same client partitioner: a page's deliveries and events share a partition
number, one member maps a page's deliveries in order, and its events follow in that order.

It lives with the gateway (``producers/webhook``): it is the webhook producer's mapping,
moved behind the log; it imports only the gateway's mapping and the layers below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from convsync.ends import EndsProbe
from convsync.errors import ConsumerFatalError
from convsync.kafka import ClientConfig, check_record_error, make_consumer, producer_config
from convsync.observe import Heartbeat
from convsync.settings import Settings
from producers.webhook.deliveries import MAX_EVENT_BYTES, map_delivery
from schemas.records import dead_letter

log = logging.getLogger(__name__)

COMPONENT: Final = "mapper"
GROUP: Final = "convsync-mapper"
#: The exit code of a mapper whose watchdog found a transaction stuck in librdkafka.
STUCK_EXIT: Final = 3

DELIVERIES: Final = Counter("convsync_mapper_deliveries", "Deliveries read and mapped.")
EVENTS: Final = Counter("convsync_mapper_events", "Events produced (committed), by kind.", ["kind"])
DEAD_LETTERS: Final = Counter(
    "convsync_mapper_dead_letters",
    "Items or deliveries that gave no event, written to the dead-letter topic.",
)
TRANSACTIONS: Final = Counter(
    "convsync_mapper_transactions", "Kafka transactions, by outcome.", ["outcome"]
)
BATCH_SECONDS: Final = Histogram(
    "convsync_mapper_batch_seconds",
    "Seconds to map and commit one batch (one transaction).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAG: Final = Gauge(
    "convsync_mapper_lag",
    "Deliveries behind the partition's high watermark.",
    ["group", "topic", "partition"],
)
HEARTBEAT: Heartbeat = Heartbeat()


@dataclass(frozen=True, slots=True)
class MapperConfig:
    """What the mapper needs of the settings, and how it batches."""

    kafka: ClientConfig
    deliveries: str
    events: str
    dlq: str
    group: str = GROUP
    # One per instance, stable across its restarts: a restarted instance fences its
    # previous self and aborts the transaction it left open.
    transactional_id: str = f"{GROUP}-{socket.gethostname()}"
    max_records: int = 500
    max_wait: float = 0.05
    max_record_bytes: int = MAX_EVENT_BYTES
    lag_every: float = 5.0
    # A transaction still open after this many seconds is stuck in librdkafka (seen in
    # send_offsets_to_transaction after a lost group session): the process exits, its
    # supervisor starts it again and the new instance aborts the transaction.
    stuck_after: float = 120.0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, group: str = GROUP, instance: str | None = None, **kw: Any
    ) -> MapperConfig:
        """Return the config of a mapper of ``settings``; ``instance`` names its transactions."""
        return cls(
            kafka=settings.kafka_config(),
            deliveries=settings.topic("deliveries"),
            events=settings.topic("events"),
            dlq=settings.topic("dlq"),
            group=group,
            transactional_id=f"{settings.topic_prefix}.{group}-{instance or socket.gethostname()}",
            **kw,
        )


@dataclass(slots=True)
class Totals:
    """What one mapper did."""

    deliveries: int = 0
    events: int = 0
    dead_letters: int = 0
    transactions: int = 0
    aborts: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


class Mapper:
    """The consume-transform-produce loop; :meth:`run` until ``stop`` is set."""

    def __init__(self, config: MapperConfig) -> None:
        self.config = config
        self.totals = Totals()
        self._assigned: set[int] = set()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._open_since: float | None = None  # monotonic start of the open transaction

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._assigned.update(p.partition for p in parts)
        log.info("mapper: assigned %s", sorted(p.partition for p in parts))

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Called inside consume(): between transactions, none is open.
        for p in parts:
            self._assigned.discard(p.partition)
            with contextlib.suppress(KeyError):  # no lag reported for it yet
                LAG.remove(self.config.group, self.config.deliveries, str(p.partition))
        log.info("mapper: revoked %s", sorted(p.partition for p in parts))

    def run(self, stop: threading.Event, *, drained: Callable[[], bool] | None = None) -> Totals:
        """Map deliveries until ``stop`` is set (or ``drained()`` says so after an idle round).

        Raises :class:`ConsumerFatalError` when the consumer or the producer can never
        work again (fenced by another instance with the same transactional id, a fatal
        librdkafka error): the command exits and its supervisor starts a new one.
        """
        cfg = self.config
        consumer = make_consumer(
            cfg.kafka,
            cfg.group,
            **{
                "enable.partition.eof": False,
                "log_level": 4,
                # librdkafka's 45 s session: a member's session lost to a short broker
                # outage (10 s was tried) left send_offsets_to_transaction blocked for
                # good (tests/fault/test_outages.py); the watchdog below covers the rest.
            },
        )
        producer = Producer(
            producer_config(
                cfg.kafka,
                **{
                    "transactional.id": cfg.transactional_id,
                    "linger.ms": 5,
                    # An instance that died with a transaction open blocks read_committed
                    # readers of its partitions until the broker aborts it: keep it short.
                    "transaction.timeout.ms": 30_000,
                    "log_level": 4,
                },
            )
        )
        self._consumer, self._producer = consumer, producer
        # The lag's offsets come from a thread of its own: a broker slow to answer them
        # never holds a transaction.
        probe = EndsProbe(
            cfg.kafka,
            cfg.group,
            (cfg.deliveries,),
            interval=cfg.lag_every,
            name="mapper-ends",
            committed=True,
        )
        threading.Thread(
            target=self._watchdog, args=(stop,), name="mapper-watchdog", daemon=True
        ).start()
        try:
            producer.init_transactions(30)
            consumer.subscribe(
                [cfg.deliveries], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            next_lag = 0.0
            while not stop.is_set():
                HEARTBEAT.beat("mapping")
                msgs = consumer.consume(cfg.max_records, cfg.max_wait)
                records = [m for m in msgs if _usable(m)]
                if records:
                    self._transact(consumer, producer, records)
                elif drained is not None and drained():
                    break
                now = time.monotonic()
                if now >= next_lag:
                    self._report_lag(probe)
                    next_lag = now + cfg.lag_every
        except KafkaException as e:
            err = e.args[0] if e.args else None
            raise ConsumerFatalError(f"mapper: {err}") from e
        finally:
            self._consumer = self._producer = None
            probe.close()
            consumer.close()
            producer.flush(5)
        return self.totals

    def _watchdog(self, stop: threading.Event) -> None:
        """Exit the process when a transaction stays open past ``stuck_after`` seconds."""
        while not stop.wait(1.0):
            since = self._open_since
            if since is not None and time.monotonic() - since > self.config.stuck_after:
                log.error(
                    "mapper: a transaction open for %.0fs: librdkafka is stuck; exiting for "
                    "a restart (the next instance aborts it)",
                    time.monotonic() - since,
                )
                logging.shutdown()
                os._exit(STUCK_EXIT)

    def _transact(self, consumer: Consumer, producer: Producer, msgs: list[Message]) -> None:
        """Map ``msgs`` and commit their events, dead letters and offsets as one transaction;
        after an abort, seek back to the batch's first offsets (it is read again)."""
        self._open_since = time.monotonic()
        try:
            self._transact_once(consumer, producer, msgs)
        finally:
            self._open_since = None

    def _transact_once(self, consumer: Consumer, producer: Producer, msgs: list[Message]) -> None:
        cfg = self.config
        started = time.perf_counter()
        producer.begin_transaction()
        kinds: dict[str, int] = {}
        events = letters = 0
        try:
            for msg in msgs:
                mapped = map_delivery(msg.value(), max_record_bytes=cfg.max_record_bytes)
                for key, value in mapped.records:
                    _produce(producer, cfg.events, key, value)
                for kind in mapped.kinds:
                    kinds[kind] = kinds.get(kind, 0) + 1
                events += len(mapped.records)
                for failure in mapped.failures:
                    letter = dead_letter(
                        component=COMPONENT,
                        topic=msg.topic() or cfg.deliveries,
                        partition=msg.partition() or 0,
                        offset=msg.offset() or 0,
                        key=msg.key(),
                        value=msg.value(),
                        reason=failure.reason,
                        error_type=failure.error_type,
                        failed_at=int(time.time() * 1000),
                    )
                    log.warning(
                        "mapper: dead letter for %s[%s]@%s: %s",
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        failure.reason,
                    )
                    headers: list[tuple[str, str | bytes | None]] = list(letter.headers)
                    producer.produce(cfg.dlq, value=letter.value, key=letter.key, headers=headers)
                    letters += 1
            producer.send_offsets_to_transaction(
                _next_offsets(msgs), consumer.consumer_group_metadata(), 30
            )
            _commit(producer)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                log.warning("mapper: transaction aborted (%s); reading the batch again", err)
                producer.abort_transaction(30)
                TRANSACTIONS.labels("aborted").inc()
                self.totals.aborts += 1
                for tp in _first_offsets(msgs):
                    if tp.partition in self._assigned:
                        consumer.seek(tp)
                return
            raise
        TRANSACTIONS.labels("committed").inc()
        BATCH_SECONDS.observe(time.perf_counter() - started)
        DELIVERIES.inc(len(msgs))
        DEAD_LETTERS.inc(letters)
        for kind, n in kinds.items():
            EVENTS.labels(kind).inc(n)
            self.totals.kinds[kind] = self.totals.kinds.get(kind, 0) + n
        t = self.totals
        t.deliveries += len(msgs)
        t.events += events
        t.dead_letters += letters
        t.transactions += 1

    def _report_lag(self, probe: EndsProbe) -> None:
        """Set the lag of every assigned partition: its high watermark minus the offset
        the group committed (with the last transaction), or minus its low watermark
        when nothing was committed yet; both as the probe's thread last learned them (no
        query to Kafka here: convsync/ends.py)."""
        cfg = self.config
        probe.want(self._assigned)
        ends, done = probe.ends(cfg.deliveries), probe.done(cfg.deliveries)
        for p in sorted(self._assigned & ends.keys() & done.keys()):
            LAG.labels(cfg.group, cfg.deliveries, str(p)).set(max(0, ends[p] - done[p]))


def _usable(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return True
    check_record_error(err)  # raises ConsumerFatalError when fatal
    return False


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
        except BufferError:
            producer.poll(0.05)  # the queue drains as the broker confirms
        else:
            return


def _commit(producer: Producer) -> None:
    while True:
        try:
            producer.commit_transaction(30)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.retriable():
                log.warning("mapper: commit not confirmed (%s); trying again", err)
                continue
            raise
        else:
            return


def _next_offsets(msgs: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        last[(m.topic() or "", m.partition() or 0)] = (m.offset() or 0) + 1
    return [TopicPartition(t, p, o) for (t, p), o in last.items()]


def _first_offsets(msgs: list[Message]) -> list[TopicPartition]:
    first: dict[tuple[str, int], int] = {}
    for m in msgs:
        first.setdefault((m.topic() or "", m.partition() or 0), m.offset() or 0)
    return [TopicPartition(t, p, o) for (t, p), o in first.items()]
