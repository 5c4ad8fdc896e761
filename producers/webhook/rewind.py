"""`convsync mapper-rewind`: move the mapper's group back on ``<prefix>.deliveries``.

A mapping bug is fixed by fixing ``mapping.py`` and replaying the deliveries through the
fixed mapper: stop the mappers, rewind their group to a time (or an offset), start them
again. The events they write again carry the same ids (the id rule reads the same items),
so every projection takes them as copies of what it holds; a fix that changes a field
but not the id reaches Postgres with `convsync replay` (docs/gateway.md, "Route B").

The group must have no member while it is moved: Kafka refuses to commit offsets for a
group with live members (the rewind then fails and says so).
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException, TopicPartition

from convsync.errors import RetryableError
from convsync.kafka import ClientConfig, list_partitions, make_consumer, watermarks

log = logging.getLogger(__name__)


def rewind(
    kafka: ClientConfig,
    topic: str,
    group: str,
    *,
    to_time_ms: int | None = None,
    to_offset: int | None = None,
    partitions: list[int] | None = None,
    timeout: float = 10.0,
) -> dict[int, int]:
    """Commit ``group``'s offsets on ``topic`` back to ``to_time_ms`` (the first record at
    or after it) or to ``to_offset`` (clamped to the partition's log); return them.

    Exactly one of ``to_time_ms`` and ``to_offset`` is given. A partition with no record
    at or after the time is set to its end. Raises :class:`RetryableError` when Kafka
    does not answer or refuses the commit (a member of the group is still running).
    """
    if (to_time_ms is None) == (to_offset is None):
        raise ValueError("give exactly one of to_time_ms and to_offset")
    consumer = make_consumer(kafka, group, **{"log_level": 3})
    try:
        parts = partitions if partitions is not None else list_partitions(consumer, topic)
        target: dict[int, int] = {}
        if to_time_ms is not None:
            asked = [TopicPartition(topic, p, to_time_ms) for p in parts]
            try:
                found = consumer.offsets_for_times(asked, timeout=timeout)
            except KafkaException as e:
                raise RetryableError(f"cannot look up offsets of {topic}: {e}") from e
            for tp in found:
                offset = tp.offset
                if offset < 0:  # nothing at or after the time: the end
                    offset = watermarks(consumer, topic, tp.partition, timeout=timeout)[1]
                target[tp.partition] = offset
        else:
            assert to_offset is not None
            for p in parts:
                low, high = watermarks(consumer, topic, p, timeout=timeout)
                target[p] = min(max(to_offset, low), high)
        offsets = [TopicPartition(topic, p, o) for p, o in sorted(target.items())]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            raise RetryableError(
                f"cannot move group {group} on {topic} (stop every mapper first): {e}"
            ) from e
        log.info("group %s rewound on %s: %s", group, topic, target)
        return target
    finally:
        consumer.close()
