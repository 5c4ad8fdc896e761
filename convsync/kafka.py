"""Kafka client factories and topic management (confluent-kafka / librdkafka)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined,unused-ignore]
from confluent_kafka.cimpl import NewTopic

from convsync.errors import ConsumerFatalError, RetryableError, StackError
from convsync.settings import Settings

log = logging.getLogger(__name__)

# deliveries: the gateway's verified entries, mapped into events by `convsync mapper`;
# relay: verified bodies for `convsync relay` (a move from another inbox), relay-dead
# those it could not forward after its attempts.
TOPIC_SUFFIXES: Final = (
    "events",
    "crawl",
    "conversations",
    "dlq",
    "deliveries",
    "relay",
    "relay-dead",
)

#: The record limit of the topics holding whole webhook bodies or entries (deliveries,
#: relay, relay-dead): a body of the gateway's 1 MiB limit is one entry of one page at
#: worst, and the broker's default (~1 MB) would refuse it. Their topics are created
#: with this ``max.message.bytes`` and the gateway's producer allows it.
LARGE_RECORD_BYTES: Final = 4 * 1024 * 1024
_LARGE: Final = frozenset({"deliveries", "relay", "relay-dead"})

#: The librdkafka properties every client of one cluster shares (bootstrap servers,
#: security, secrets included): what a component keeps of :class:`Settings` to reach
#: Kafka (see :meth:`Settings.kafka_config`).
ClientConfig: TypeAlias = Mapping[str, str | int | float | bool]


def client_config(source: Settings | ClientConfig) -> dict[str, Any]:
    """Return a new dict of the base librdkafka properties of ``source`` (secrets
    included: never log it)."""
    if isinstance(source, Settings):
        return dict(source.kafka_config())
    return dict(source)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one convsync topic is created."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


def topic_specs(settings: Settings, *, replication_factor: int = 1) -> list[TopicSpec]:
    """Return the specs of the convsync topics (:data:`TOPIC_SUFFIXES`) for ``settings``.

    With three or more replicas, ``min.insync.replicas`` is 2 so an acks=all write
    survives the loss of any one broker.
    """
    base: dict[str, str] = {}
    if replication_factor >= 3:
        base["min.insync.replicas"] = "2"
    specs = []
    for suffix in TOPIC_SUFFIXES:
        config = dict(base)
        if suffix == "conversations":
            config["cleanup.policy"] = "compact"
        if suffix in _LARGE:
            config["max.message.bytes"] = str(LARGE_RECORD_BYTES)
        specs.append(
            TopicSpec(settings.topic(suffix), settings.partitions, replication_factor, config)
        )
    return specs


def admin_client(settings: Settings) -> AdminClient:
    """Return an AdminClient for ``settings``."""
    return AdminClient(settings.kafka_config())


def ensure_topics(
    admin: AdminClient, specs: Iterable[TopicSpec], *, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An existing topic is left as it is (idempotent). Raises :class:`StackError` for
    any other failure.
    """
    specs = list(specs)
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=s.replication_factor,
            config=dict(s.config),
        )
        for s in specs
    ]
    if not new:
        return []
    created = []
    futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as e:
            err = e.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise StackError(f"cannot create topic {name}: {err}") from e
    # Leaders in the metadata first: before that, a ListOffsets fails outright (_NOENT).
    _await_metadata(admin, [s.name for s in specs], timeout=timeout)
    _await_leaders(admin, specs, timeout=timeout)
    return created


def _await_metadata(admin: AdminClient, names: list[str], *, timeout: float) -> None:
    # CreateTopics returns once the controller accepted them; brokers learn of the new
    # partitions a moment later. Callers expect to use the topics at once.
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        missing = [
            n
            for n in names
            if n not in md.topics
            or md.topics[n].error is not None
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise StackError(f"topics without leaders after {timeout:.0f}s: {missing}")
        time.sleep(0.1)


def _await_leaders(admin: AdminClient, specs: list[TopicSpec], *, timeout: float) -> None:
    # A partition is in the metadata with its leader before that broker leads it: for
    # a moment after creation a ListOffsets is refused with NOT_LEADER_FOR_PARTITION (a
    # producer retries that by itself, a consumer's watermark query does not). Ask each
    # partition until its leader answers.
    pending = [TopicPartition(s.name, p) for s in specs for p in range(s.partitions)]
    deadline = time.monotonic() + timeout
    pause = 0.02
    while pending:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call,unused-ignore]
        futures = admin.list_offsets({tp: latest for tp in pending}, request_timeout=timeout)
        last: Exception | None = None
        waiting = []
        for tp, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as e:
                if not _settling(e):
                    raise StackError(
                        f"cannot read the end of {tp.topic}[{tp.partition}]: {e.args[0]}"
                    ) from e
                last = e
                waiting.append(tp)
        pending = waiting
        if not pending:
            break
        if time.monotonic() + pause > deadline:
            raise StackError(f"partitions without a serving leader after {timeout:.0f}s: {last}")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


#: Errors a partition shows while its leadership settles (just created, or moving):
#: each met on the dev broker right after a topic's creation, or during an election.
SETTLING: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)


def _settling(e: KafkaException) -> bool:
    err = e.args[0] if e.args else None
    return isinstance(err, KafkaError) and err.code() in SETTLING


def read_watermarks(consumer: Consumer, tp: TopicPartition, *, timeout: float) -> tuple[int, int]:
    """Return ``(low, high)`` of ``tp`` as its leader says now.

    librdkafka does not retry a watermark query: an error of :data:`SETTLING` is
    retried here, with the client's metadata of the topic refreshed, until ``timeout``.
    Raises :class:`KafkaException` with the last error after that, or at once for any
    other error.
    """
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        left = max(0.1, deadline - time.monotonic())
        try:
            marks = consumer.get_watermark_offsets(tp, timeout=left, cached=False)
        except KafkaException as e:
            if not _settling(e) or time.monotonic() + pause > deadline:
                raise
            # librdkafka keeps a partition it once found unknown unknown until its next
            # metadata refresh: ask for the topic now.
            consumer.list_topics(tp.topic, timeout=left)
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
            continue
        if marks is None:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, f"no watermarks of {tp.topic}[{tp.partition}]")
            )
        low, high = marks
        return int(low), int(high)


def producer_config(settings: Settings | ClientConfig, **overrides: Any) -> dict[str, Any]:
    """Return the config of a durable producer: idempotent, acks=all."""
    conf: dict[str, Any] = {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    conf.update(overrides)
    return conf


def make_producer(settings: Settings | ClientConfig, **overrides: Any) -> Producer:
    """Return a durable (idempotent, acks=all) producer."""
    return Producer(producer_config(settings, **overrides))


def make_consumer(settings: Settings | ClientConfig, group: str, **overrides: Any) -> Consumer:
    """Return a consumer in ``group`` with auto-commit off, auto offset reset earliest, and
    reading committed records only."""
    conf: dict[str, Any] = {
        **client_config(settings),
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # librdkafka's default, stated: an aborted transaction's records are never read
        # (tests/consumers/test_isolation.py; docs/crawler.md, Kafka transactions).
        "isolation.level": "read_committed",
    }
    conf.update(overrides)
    return Consumer(conf)


def is_fatal(err: KafkaError) -> bool:
    """True when ``err`` means the client can never be used again. librdkafka reports its
    fatal error to a consumer as a record error of code ``_FATAL``, whose ``fatal()`` is
    false: both are checked."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def check_record_error(err: KafkaError) -> None:
    """Judge an error a consumer returned in place of a record.

    Raises :class:`ConsumerFatalError` when the consumer can never be used again (see
    :func:`is_fatal`); the end of a partition is ignored; anything else (a broker down,
    a topic not created yet) is logged, and librdkafka recovers from it by itself.
    """
    if err.code() == KafkaError._PARTITION_EOF:
        return
    if is_fatal(err):
        raise ConsumerFatalError(f"consumer failed fatally: {err}")
    log.warning("consumer: %s", err)


def list_partitions(consumer: Consumer, topic: str, *, timeout: float = 5.0) -> list[int]:
    """Return the partition numbers of ``topic``, in order.

    Raises :class:`RetryableError` when Kafka does not answer in ``timeout`` seconds or
    does not have the topic (yet).
    """
    try:
        md = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as e:
        raise RetryableError(f"cannot list topic {topic}: {e}") from e
    info = md.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise RetryableError(f"topic {topic} not available: {info.error if info else 'absent'}")
    return sorted(info.partitions)


def watermarks(
    consumer: Consumer, topic: str, partition: int, *, timeout: float = 5.0
) -> tuple[int, int]:
    """Return ``(low, high)`` of ``topic[partition]``: :func:`read_watermarks` for a
    caller that retries, raising :class:`RetryableError` where it raises
    :class:`KafkaException`."""
    try:
        return read_watermarks(consumer, TopicPartition(topic, partition), timeout=timeout)
    except KafkaException as e:
        raise RetryableError(f"cannot read end offsets of {topic}[{partition}]: {e}") from e


def behind(consumer: Consumer, topic: str, ends: Mapping[int, int]) -> dict[int, int]:
    """Return how many records of each partition of ``ends`` (its known high watermarks)
    lie past ``consumer``'s position; no query to the broker. A partition whose position
    is unknown (no record consumed yet) is left out."""
    if not ends:
        return {}
    positions = consumer.position([TopicPartition(topic, p) for p in sorted(ends)])
    return {
        tp.partition: max(0, ends[tp.partition] - tp.offset) for tp in positions if tp.offset >= 0
    }


def read_record(
    source: Settings | ClientConfig,
    position: TopicPartition,
    *,
    group: str,
    timeout: float = 10.0,
) -> tuple[bytes | None, bytes | None] | None:
    """Return the key and value of the record at ``position`` (topic, partition,
    offset), read from Kafka again, or None when the log no longer has it (retention
    deleted it, or compaction).

    For a component that keeps decoded rows rather than records and needs a record's
    original bytes once in a while (a dead letter): a short-lived consumer assigns the
    one partition (``group`` names it; it joins no group and commits nothing). Raises
    :class:`RetryableError` when Kafka does not return it in ``timeout`` seconds.
    """
    topic, partition, offset = position.topic, position.partition, position.offset
    reader = make_consumer(source, group)
    try:
        reader.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = reader.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None or msg.error() is not None:
                continue
            # The first record at or after the position: a later one means it is gone.
            return (msg.key(), msg.value()) if msg.offset() == offset else None
    finally:
        reader.close()
    raise RetryableError(f"record {topic}[{partition}]@{offset} not read in time")


def check_reachable(settings: Settings, *, timeout: float = 5.0) -> int:
    """Return the number of brokers in the cluster. Raises :class:`RetryableError`."""
    # A probe of a server that may still be starting: connection-refused noise is
    # expected here, so librdkafka logs only critical lines for this client.
    admin = AdminClient({**settings.kafka_config(), "log_level": 2})
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as e:
        raise RetryableError(f"Kafka at {settings.kafka_bootstrap} unreachable: {e}") from e
    return len(md.brokers)
