"""What a materializer reads, writes and is called (MaterializerConfig), and how it groups
records into transactions and backs off (BatchConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from pydantic import SecretStr

from convsync.kafka import ClientConfig
from convsync.settings import Settings

DEFAULT_GROUP: Final = "convsync-materializer"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """How records are grouped into Postgres transactions and how failures back off.

    A batch is flushed when it holds ``max_records`` records, when its record values add
    up to ``max_bytes`` (checked after each poll, so a batch may pass it by one poll's
    records), or ``max_wait`` seconds after its first record arrived, whichever comes
    first. The defaults are what tests/bench/bench_materializer.py measured best (the
    figures are in docs/materializer.md).
    """

    # Each batch rewrites every conversation it touches once: the larger the batch, the
    # fewer rewrites per event. Two batches are in memory at a time (one written, one
    # gathered), each holding the decoded row of every record.
    max_records: int = 30000
    # Bounds memory when records are large: flushes a batch before max_records does.
    max_bytes: int = 16 * 1024 * 1024
    max_wait: float = 0.02
    # Postgres connections that write one batch in parallel, each a share of its
    # partitions in its own transaction (store.Store).
    writers: int = 2
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    # How long one poll waits when nothing is buffered (bounds the reaction to stop()).
    idle_poll: float = 0.5
    # How long one poll waits while the writer thread is busy (how soon a finished
    # write is noticed and the next batch handed over).
    busy_poll: float = 0.005
    # Seconds between lag gauge refreshes (only with metrics on).
    lag_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError("max_records must be >= 1")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self.writers < 1:
            raise ValueError("writers must be >= 1")
        if self.max_wait < 0 or min(self.busy_poll, self.backoff_initial, self.backoff_max) <= 0:
            raise ValueError("durations must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class MaterializerConfig:
    """The settings one materializer needs, and no more: where Kafka and Postgres are,
    which topics it reads and writes, its consumer group and its tuning.

    The command builds it from :class:`Settings` (:meth:`from_settings`); the
    materializer never sees the rest of them (page tokens, the app secret...).
    """

    # librdkafka properties of the cluster (convsync.kafka.ClientConfig): may hold
    # SASL passwords, so kept out of repr.
    kafka: ClientConfig = field(repr=False)
    events_topic: str
    dlq_topic: str
    group: str = DEFAULT_GROUP
    # libpq connection string of the database (holds its password).
    database_url: SecretStr
    # The projection's Postgres schema (migrated beforehand).
    schema: str
    batch: BatchConfig = field(default_factory=BatchConfig)
    # Static group membership (group.instance.id): a member restarted with the same id
    # gets its partitions back without a rebalance.
    instance_id: str | None = None
    # Refresh the lag gauge every batch.lag_interval seconds (with metrics served).
    report_lag: bool = False

    def __post_init__(self) -> None:
        # Frozen all the way down: the caller's dict cannot change it afterwards.
        object.__setattr__(self, "kafka", MappingProxyType(dict(self.kafka)))

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
    ) -> MaterializerConfig:
        """Return the config of a materializer of ``settings``' stack: its events and
        dead-letter topics, and ``schema`` (default: ``settings.db_schema``)."""
        return cls(
            kafka=settings.kafka_config(),
            events_topic=settings.topic("events"),
            dlq_topic=settings.topic("dlq"),
            group=group,
            database_url=settings.database_url,
            schema=schema or settings.db_schema,
            batch=batch or BatchConfig(),
            instance_id=instance_id,
            report_lag=report_lag,
        )
