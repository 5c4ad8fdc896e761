"""What `convsync status` reports: lag per group and partition, crawls, DLQ, row counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql

from convsync.db import connect
from convsync.errors import RetryableError
from convsync.kafka import read_watermarks
from convsync.settings import Settings


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far one consumer group is behind on one partition."""

    group: str
    topic: str
    partition: int
    next_offset: int
    high_watermark: int

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - self.next_offset)


@dataclass(slots=True)
class Status:
    """A snapshot of the pipeline."""

    kafka_bootstrap: str
    db_schema: str
    high_watermarks: dict[str, dict[int, int]] = field(default_factory=dict)
    lags: list[PartitionLag] = field(default_factory=list)
    crawls: list[dict[str, Any]] = field(default_factory=list)
    dlq_records: int = 0
    sync_statistics: list[dict[str, Any]] = field(default_factory=list)
    events_rows: int = 0
    conversations_rows: int = 0
    events_last_minute: int = 0
    stalled: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # What the supervisor of `convsync run` last wrote (components, restarts), if any:
    # filled in by the command, which knows the state folder.
    supervisor: dict[str, Any] | None = None

    @property
    def events_per_second(self) -> float:
        """Events newly stored in Postgres per second over the last minute."""
        return self.events_last_minute / 60.0

    def lag_by_group(self) -> dict[str, int]:
        """Return the total lag of every group."""
        out: dict[str, int] = {}
        for lag in self.lags:
            out[lag.group] = out.get(lag.group, 0) + lag.lag
        return out

    def as_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["lags"] = [{**asdict(lag), "lag": lag.lag} for lag in self.lags]
        data["lag_by_group"] = self.lag_by_group()
        data["events_per_second"] = self.events_per_second
        data["high_watermarks"] = {
            t: {str(p): o for p, o in parts.items()} for t, parts in self.high_watermarks.items()
        }
        return data


def watermarks(
    settings: Settings, topics: list[str], *, timeout: float = 10.0
) -> dict[str, dict[int, tuple[int, int]]]:
    """Return ``{topic: {partition: (low, high)}}``. Raises :class:`RetryableError`."""
    consumer = Consumer(
        {**settings.kafka_config(), "group.id": "convsync-status", "enable.auto.commit": False}
    )
    out: dict[str, dict[int, tuple[int, int]]] = {}
    try:
        md = consumer.list_topics(timeout=timeout)
        for topic in topics:
            if topic not in md.topics:
                continue
            out[topic] = {}
            for p in md.topics[topic].partitions:
                out[topic][p] = read_watermarks(consumer, TopicPartition(topic, p), timeout=timeout)
    except KafkaException as e:
        raise RetryableError(f"Kafka unreachable: {e}") from e
    finally:
        consumer.close()
    return out


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description or []]
    return [
        {
            k: (v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in zip(names, r, strict=True)
        }
        for r in cur.fetchall()
    ]


def collect(settings: Settings, *, stall_after: float = 300.0) -> Status:
    """Return the current status; unreachable parts are listed in ``errors``.

    A consumer is *stalled* when a partition has lag but its stored offset has not moved
    for ``stall_after`` seconds; a crawl is stalled when it is running and its progress
    has not changed for that long.
    """
    status = Status(kafka_bootstrap=settings.kafka_bootstrap, db_schema=settings.db_schema)
    topics = [settings.topic(s) for s in ("events", "crawl", "conversations", "dlq")]
    try:
        marks = watermarks(settings, topics)
    except RetryableError as e:
        status.errors.append(str(e))
        marks = {}
    status.high_watermarks = {
        t: {p: hi for p, (_, hi) in parts.items()} for t, parts in marks.items()
    }
    status.dlq_records = sum(hi - lo for lo, hi in marks.get(settings.topic("dlq"), {}).values())
    schema = sql.Identifier(settings.db_schema)
    try:
        with connect(settings) as conn:
            rows = conn.execute(
                sql.SQL(
                    'SELECT "group", topic, "partition", next_offset,'
                    " extract(epoch FROM now() - updated_at) FROM {}.consumer_offsets"
                    " ORDER BY 1, 2, 3"
                ).format(schema)
            ).fetchall()
            for group, topic, partition, next_offset, idle in rows:
                hw = status.high_watermarks.get(str(topic), {}).get(int(str(partition)), 0)
                lag = PartitionLag(
                    str(group), str(topic), int(str(partition)), int(str(next_offset)), hw
                )
                status.lags.append(lag)
                if lag.lag > 0 and float(str(idle)) > stall_after:
                    status.stalled.append(
                        f"group {lag.group} partition {lag.topic}[{lag.partition}]: lag "
                        f"{lag.lag}, no progress for {float(str(idle)):.0f}s"
                    )
            status.crawls = _rows(
                conn.execute(
                    sql.SQL(
                        "SELECT *, extract(epoch FROM now() - updated_at) AS idle_seconds"
                        " FROM {}.crawl_state ORDER BY page_id"
                    ).format(schema)
                )
            )
            for crawl in status.crawls:
                idle = float(crawl.get("idle_seconds") or 0)
                if crawl.get("status") == "running" and idle > stall_after:
                    status.stalled.append(
                        f"crawl of page {crawl['page_id']}: no progress for {idle:.0f}s"
                    )
            has_views = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL",
                (f"{settings.db_schema}.sync_statistics",),
            ).fetchone()
            if has_views and has_views[0]:
                status.sync_statistics = _rows(
                    conn.execute(
                        sql.SQL("SELECT * FROM {}.sync_statistics ORDER BY page_id").format(schema)
                    )
                )
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM {}.events WHERE inserted_at > now() - interval '1 minute'"
                ).format(schema)
            ).fetchone()
            status.events_last_minute = int(str(row[0])) if row else 0
            for table, attr in (("events", "events_rows"), ("conversations", "conversations_rows")):
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.{}").format(schema, sql.Identifier(table))
                ).fetchone()
                setattr(status, attr, int(str(row[0])) if row else 0)
    except RetryableError as e:
        status.errors.append(str(e))
    return status
