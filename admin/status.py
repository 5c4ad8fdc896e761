"""What `convsync status` reports: lag per group and partition, crawls, DLQ, row counts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql

from admin.counts import count_rows, insert_rate, inserted_rows
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
    # Which of events_rows, conversations_rows, events_per_second are estimates.
    estimated: list[str] = field(default_factory=list)
    # Events stored per second over the window collect() was given; None without one.
    events_per_second: float | None = None
    stalled: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # What the supervisor of `convsync run` last wrote (components, restarts), if any:
    # filled in by the command, which knows the state folder.
    supervisor: dict[str, Any] | None = None

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


def collect(settings: Settings, *, stall_after: float = 300.0, rate_window: float = 0.0) -> Status:
    """Return the current status; unreachable parts are listed in ``errors``.

    A consumer is *stalled* when a partition has lag but its stored offset has not moved
    for ``stall_after`` seconds; a crawl is stalled when it is running and its progress
    has not changed for that long. Row counts of large tables are estimates (named in
    ``estimated``, see admin/counts.py); with ``rate_window`` > 0 the events stored per
    second are measured over that many seconds (this call then lasts at least as long),
    otherwise ``events_per_second`` is None.
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
    try:
        with connect(settings) as conn:
            _read_database(conn, status, stall_after, rate_window)
    except RetryableError as e:
        status.errors.append(str(e))
    return status


def _read_database(
    conn: psycopg.Connection[Any], status: Status, stall_after: float, rate_window: float = 0.0
) -> None:
    """Fill ``status`` from Postgres: lags, crawls, statistics, row counts, rate."""
    schema = sql.Identifier(status.db_schema)
    started = time.monotonic()
    inserted = inserted_rows(conn, status.db_schema, "events") if rate_window > 0 else 0
    rows = conn.execute(
        sql.SQL(
            'SELECT "group", topic, "partition", next_offset,'
            " extract(epoch FROM now() - updated_at) FROM {}.consumer_offsets"
            " ORDER BY 1, 2, 3"
        ).format(schema)
    ).fetchall()
    for group, topic, partition, next_offset, idle in rows:
        hw = status.high_watermarks.get(str(topic), {}).get(int(str(partition)), 0)
        lag = PartitionLag(str(group), str(topic), int(str(partition)), int(str(next_offset)), hw)
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
            status.stalled.append(f"crawl of page {crawl['page_id']}: no progress for {idle:.0f}s")
    has_views = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (f"{status.db_schema}.sync_statistics",),
    ).fetchone()
    if has_views and has_views[0]:
        status.sync_statistics = _rows(
            conn.execute(
                sql.SQL("SELECT * FROM {}.sync_statistics ORDER BY page_id").format(schema)
            )
        )
    for table, attr in (("events", "events_rows"), ("conversations", "conversations_rows")):
        counted = count_rows(conn, status.db_schema, table)
        setattr(status, attr, counted.rows)
        if counted.estimated:
            status.estimated.append(attr)
    if rate_window > 0:
        status.events_per_second = insert_rate(
            conn, status.db_schema, "events", inserted, started, rate_window
        )
        status.estimated.append("events_per_second")
