"""What `convsync status` reports: lag per group and partition, crawls, DLQ, row counts.

:class:`StatusReader` keeps one Kafka consumer and one Postgres connection for repeated
reads (the dashboard's sampler asks every few seconds, for as long as the gateway runs);
:func:`collect` and :func:`watermarks` are its one-shot forms for `convsync status`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from types import TracebackType
from typing import Any, Final

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from psycopg import sql

from admin.counts import count_rows, insert_rate, inserted_rows
from convsync.db import connect
from convsync.errors import RetryableError
from convsync.kafka import read_watermarks
from convsync.settings import Settings

Marks = dict[str, dict[int, tuple[int, int]]]
# How many pages' crawls and sync statistics a status lists unless asked otherwise: the
# ones worth a look first. Every page is still counted (crawl_counts, sync_totals); a
# list of every page is the paged admin API's job (docs/performance.md, "The read path").
LISTED_PAGES: Final = 50
# A slow count(*) on a large table gives up rather than holding the sampler's thread.
_STATEMENT_TIMEOUT: Final = "SET statement_timeout = '10s'"


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far one consumer group is behind on one partition."""

    group: str
    topic: str
    partition: int
    next_offset: int
    high_watermark: int
    # Offsets past next_offset that hold no record a read_committed consumer reads: the
    # commit markers of the mapper's transactions (counted by reading; see collect).
    unreadable: int = 0

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - self.next_offset - self.unreadable)


@dataclass(slots=True)
class Status:
    """A snapshot of the pipeline."""

    kafka_bootstrap: str
    db_schema: str
    high_watermarks: dict[str, dict[int, int]] = field(default_factory=dict)
    lags: list[PartitionLag] = field(default_factory=list)
    # At most ``listed_pages`` crawls: not done first, then the latest; counted by status
    # over every page in crawl_counts.
    crawls: list[dict[str, Any]] = field(default_factory=list)
    crawl_counts: dict[str, int] = field(default_factory=dict)
    dlq_records: int = 0
    # At most ``listed_pages`` pages: the latest failure first; summed over every page in
    # sync_totals.
    sync_statistics: list[dict[str, Any]] = field(default_factory=list)
    sync_totals: dict[str, Any] = field(default_factory=dict)
    # None: every page listed.
    listed_pages: int | None = LISTED_PAGES
    events_rows: int = 0
    conversations_rows: int = 0
    # Which of events_rows, conversations_rows, events_per_second are estimates.
    estimated: list[str] = field(default_factory=list)
    # Events stored per second over the window collect() was given; None without one.
    events_per_second: float | None = None
    stalled: list[str] = field(default_factory=list)
    # Pages that are not syncing (a token Graph refused: needs_reconnect), with what to do.
    pages_attention: list[dict[str, Any]] = field(default_factory=list)
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


class StatusReader:
    """Long-lived clients for status reads, each call bounded by ``timeout`` seconds.

    The consumer is created on first use and kept (librdkafka reconnects by itself); the
    connection is kept until an error, then made afresh on the next call. Calls are
    serialized, so one reader may be used from any thread. Close it when done.
    """

    def __init__(self, settings: Settings, *, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self.consumers_made = 0
        self.connections_made = 0

    def __enter__(self) -> StatusReader:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _kafka(self) -> Consumer:
        if self._closed:
            raise RetryableError("status reader closed")
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self.settings.kafka_config(),
                    "group.id": "convsync-status",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    # A fetch at the end of the DLQ waits this long for records that do
                    # not come, and holds up the watermark queries queued behind it on
                    # the same broker connection (docs/admin.md, "Dashboard").
                    "fetch.wait.max.ms": 10,
                }
            )
            self.consumers_made += 1
        return self._consumer

    def _db(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise RetryableError("status reader closed")
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = connect(self.settings, timeout=self.timeout)
            self.connections_made += 1
            conn.execute(_STATEMENT_TIMEOUT)
        return conn

    def close(self) -> None:
        """Close both clients; later calls raise :class:`RetryableError`."""
        with self._lock:
            # A call already running in another thread may be between its Kafka and
            # its Postgres part: it must not open a connection nobody closes.
            self._closed = True
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def watermarks(self, topics: list[str]) -> Marks:
        """Return ``{topic: {partition: (low, high)}}``. Raises :class:`RetryableError`."""
        with self._lock:
            return _marks(self._kafka(), topics, time.monotonic() + self.timeout)

    def dlq_tail(self, n: int) -> list[dict[str, Any]]:
        """Return the last ``n`` records of ``<prefix>.dlq`` (all partitions), newest first.

        Raises :class:`RetryableError` when Kafka cannot be read.
        """
        if n == 0:
            return []
        topic = self.settings.topic("dlq")
        with self._lock:
            consumer = self._kafka()
            deadline = time.monotonic() + self.timeout
            marks = _marks(consumer, [topic], deadline).get(topic, {})
            wanted = [TopicPartition(topic, p, max(lo, hi - n)) for p, (lo, hi) in marks.items()]
            wanted = [tp for tp in wanted if marks[tp.partition][1] > tp.offset]
            out: list[dict[str, Any]] = []
            if wanted:
                try:
                    consumer.assign(wanted)
                    out = _read_to_end(consumer, {tp.partition for tp in wanted}, deadline)
                except KafkaException as e:
                    raise RetryableError(f"DLQ read failed: {e}") from e
                finally:
                    consumer.unassign()
        out.sort(key=lambda e: (e.get("failed_at") or 0, e["offset"]), reverse=True)
        return out[:n]

    def collect(
        self,
        *,
        stall_after: float = 300.0,
        rate_window: float = 0.0,
        listed_pages: int | None = LISTED_PAGES,
    ) -> Status:
        """Return the current status; unreachable parts are listed in ``errors``.

        A consumer is *stalled* when a partition has lag but its stored offset has not
        moved for ``stall_after`` seconds; a crawl is stalled when it is running and its
        progress has not changed for that long. Row counts of large tables are estimates
        (named in ``estimated``, see admin/counts.py); with ``rate_window`` > 0 the events
        stored per second are measured over that many seconds (this call then lasts at
        least as long), otherwise ``events_per_second`` is None. Crawls and sync statistics
        are listed for ``listed_pages`` pages at most (None: all), every page counted.
        """
        settings = self.settings
        status = Status(
            kafka_bootstrap=settings.kafka_bootstrap,
            db_schema=settings.db_schema,
            listed_pages=listed_pages,
        )
        topics = [settings.topic(s) for s in ("events", "crawl", "conversations", "dlq")]
        try:
            marks = self.watermarks(topics)
        except RetryableError as e:
            status.errors.append(str(e))
            marks = {}
        status.high_watermarks = {
            t: {p: hi for p, (_, hi) in parts.items()} for t, parts in marks.items()
        }
        dlq = marks.get(settings.topic("dlq"), {})
        status.dlq_records = sum(hi - lo for lo, hi in dlq.values())
        with self._lock:
            try:
                _read_database(self._db(), status, stall_after, rate_window)
            except psycopg.Error as e:
                # A broken connection is replaced on the next call (_db).
                status.errors.append(f"Postgres status query failed: {e}")
            except RetryableError as e:
                status.errors.append(str(e))
            try:
                self._settle_markers(status)
            except RetryableError as e:
                status.errors.append(str(e))
        return status

    def _settle_markers(self, status: Status, *, most: int = 64) -> None:
        """Count the unreadable offsets of small lags (``most`` at most) by reading them.

        The events topic's records come in the mapper's Kafka transactions, each followed
        by a commit marker: an offset that holds no record. A consumer that read every
        record stored the offset after its last record, the marker's, one short of the
        high watermark: without this, a caught-up materializer showed lag 1 on those
        partitions for ever. A larger lag is left as the arithmetic says (behind anyway).
        """
        small = [lag for lag in status.lags if 0 < lag.lag <= most]
        if not small:
            return
        consumer = self._kafka()
        deadline = time.monotonic() + min(self.timeout, 2.0)
        # Groups may stand at different offsets of one partition: read from the lowest.
        start: dict[tuple[str, int], int] = {}
        high: dict[tuple[str, int], int] = {}
        for lag in small:
            key = (lag.topic, lag.partition)
            start[key] = min(start.get(key, lag.next_offset), lag.next_offset)
            high[key] = lag.high_watermark
        offsets: dict[tuple[str, int], list[int]] = {key: [] for key in start}
        pending = set(start)
        try:
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is not None and msg.error() is None:
                    key = (msg.topic() or "", msg.partition() or 0)
                    if key in offsets:
                        offsets[key].append(msg.offset() or 0)
                positions = consumer.position([TopicPartition(t, p) for (t, p) in pending])
                for got in positions:
                    if got.offset >= high[(got.topic, got.partition)]:
                        pending.discard((got.topic, got.partition))
        except KafkaException as e:
            raise RetryableError(f"cannot read past the stored offsets: {e}") from e
        finally:
            consumer.unassign()
        settled: list[PartitionLag] = []
        for lag in status.lags:
            key = (lag.topic, lag.partition)
            if 0 < lag.lag <= most and key in start and key not in pending:
                records = sum(1 for o in offsets[key] if lag.next_offset <= o < lag.high_watermark)
                lag = replace(lag, unreadable=lag.high_watermark - lag.next_offset - records)
                if lag.lag == 0:  # caught up: not stalled either
                    head = f"group {lag.group} partition {lag.topic}[{lag.partition}]:"
                    status.stalled = [s for s in status.stalled if not s.startswith(head)]
            settled.append(lag)
        status.lags = settled


def _marks(consumer: Consumer, topics: list[str], deadline: float) -> Marks:
    out: Marks = {}
    try:
        md = consumer.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        for topic in topics:
            if topic not in md.topics:
                continue
            out[topic] = {}
            for p in md.topics[topic].partitions:
                left = max(0.1, deadline - time.monotonic())
                out[topic][p] = read_watermarks(consumer, TopicPartition(topic, p), timeout=left)
    except KafkaException as e:
        raise RetryableError(f"Kafka unreachable: {e}") from e
    return out


def _read_to_end(consumer: Consumer, pending: set[int], deadline: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while pending and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition() or 0)
                continue
            raise RetryableError(f"DLQ read failed: {err}")
        out.append(_dlq_entry(msg.partition() or 0, msg.offset() or 0, msg.value()))
    return out


def _dlq_entry(partition: int, offset: int, value: bytes | None) -> dict[str, Any]:
    base: dict[str, Any] = {"dlq_partition": partition, "offset": offset}
    try:
        record = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return {**base, "reason": "(DLQ record is not JSON)"}
    if not isinstance(record, dict):
        return {**base, "reason": "(DLQ record is not an object)"}
    keep = ("reason", "error_type", "component", "topic", "partition", "failed_at")
    return {**base, **{k: record.get(k) for k in keep}, "source_offset": record.get("offset")}


def watermarks(settings: Settings, topics: list[str], *, timeout: float = 10.0) -> Marks:
    """Return ``{topic: {partition: (low, high)}}`` once. Raises :class:`RetryableError`."""
    with StatusReader(settings, timeout=timeout) as reader:
        return reader.watermarks(topics)


def collect(
    settings: Settings,
    *,
    stall_after: float = 300.0,
    rate_window: float = 0.0,
    listed_pages: int | None = LISTED_PAGES,
) -> Status:
    """Return the current status once (see :meth:`StatusReader.collect`)."""
    with StatusReader(settings) as reader:
        return reader.collect(
            stall_after=stall_after, rate_window=rate_window, listed_pages=listed_pages
        )


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description or []]
    return [
        {
            k: (v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in zip(names, r, strict=True)
        }
        for r in cur.fetchall()
    ]


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
    limit = status.listed_pages
    status.crawls = _rows(
        conn.execute(
            sql.SQL(
                "SELECT *, extract(epoch FROM now() - updated_at) AS idle_seconds"
                " FROM {}.crawl_state ORDER BY status = 'done', updated_at DESC, page_id"
                " LIMIT %s"
            ).format(schema),
            (limit,),
        )
    )
    status.crawl_counts = {
        str(state): int(n)
        for state, n in conn.execute(
            sql.SQL("SELECT status, count(*) FROM {}.crawl_state GROUP BY 1 ORDER BY 1").format(
                schema
            )
        ).fetchall()
    }
    # Every stalled crawl, listed or not (bounded like pages_attention).
    for page_id, idle in conn.execute(
        sql.SQL(
            "SELECT page_id, extract(epoch FROM now() - updated_at) FROM {}.crawl_state"
            " WHERE status = 'running' AND updated_at < now() - make_interval(secs => %s)"
            " ORDER BY page_id LIMIT 1000"
        ).format(schema),
        (stall_after,),
    ).fetchall():
        status.stalled.append(f"crawl of page {page_id}: no progress for {float(idle):.0f}s")
    has_pages = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{status.db_schema}.pages",)
    ).fetchone()
    if has_pages and has_pages[0]:
        # Bounded: the pages table is one row per page, and this reads the troubled ones.
        status.pages_attention = _rows(
            conn.execute(
                sql.SQL(
                    "SELECT page_id, platform, name, status, status_message,"
                    " token_last_error_at, paused_crawl IS NOT NULL AS crawl_paused"
                    " FROM {}.pages WHERE status NOT IN ('active', 'removed')"
                    " ORDER BY page_id LIMIT 1000"
                ).format(schema)
            )
        )
    has_views = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (f"{status.db_schema}.sync_statistics",),
    ).fetchone()
    if has_views and has_views[0]:
        status.sync_statistics = _rows(
            conn.execute(
                sql.SQL(
                    "SELECT * FROM {}.sync_statistics"
                    " ORDER BY last_failure_at DESC NULLS LAST, page_id LIMIT %s"
                ).format(schema),
                (limit,),
            )
        )
        (totals,) = _rows(
            conn.execute(
                sql.SQL(
                    "SELECT count(*) AS pages, coalesce(sum(crawls), 0) AS crawls,"
                    " coalesce(sum(succeeded), 0) AS succeeded,"
                    " coalesce(sum(failed), 0) AS failed, coalesce(sum(joined), 0) AS joined,"
                    " coalesce(sum(messages_fetched), 0) AS messages_fetched"
                    " FROM {}.sync_statistics"
                ).format(schema)
            )
        )
        status.sync_totals = {k: int(v) for k, v in totals.items()}
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


def kafka_group_lag(settings: Settings, suffix: str, group: str, *, timeout: float = 10.0) -> int:
    """Return how many records of ``<prefix>.<suffix>`` lie past the offsets ``group``
    committed to Kafka (a group that keeps its offsets there: the mappers on the
    deliveries, ``convsync-mapper``). Raises :class:`RetryableError`."""
    topic = settings.topic(suffix)
    marks = watermarks(settings, [topic], timeout=timeout).get(topic, {})
    consumer = Consumer({**settings.kafka_config(), "group.id": group, "log_level": 3})
    try:
        done = consumer.committed([TopicPartition(topic, p) for p in marks], timeout=timeout)
    except KafkaException as e:
        raise RetryableError(f"cannot read {group}'s offsets on {topic}: {e}") from e
    finally:
        consumer.close()
    at = {tp.partition: max(tp.offset, 0) for tp in done}
    return sum(max(0, hi - at.get(p, 0)) for p, (_lo, hi) in marks.items())
