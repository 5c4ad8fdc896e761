"""Benchmark: the materializer vs a raw COPY (the limit) vs one transaction per event.

One run, same machine, same Postgres, the same 200,000 events over 20,000 conversations:

(a) ``convsync materialize`` (a child process) from the real topic, timed from its first
    committed batch to its last (group join and start-up excluded; the first batch's
    records are excluded from the count too), peak RSS from /proc. As noisy as (b)
    (25,000-37,000 events/s in ten runs on one quiet day), so it runs --mat-runs times
    per batch size, each after a CHECKPOINT into a fresh schema, and the ratio uses
    the median (the highest peak RSS is reported);
(b) a raw COPY of the same event rows and the final conversation rows into a fresh
    schema's tables, one transaction: the limit of any design. It is the noisiest
    figure (26,600-41,700 events/s on one quiet day), so it runs --copy-runs times,
    each after a CHECKPOINT, and the ratio uses the median;
(c) one transaction per event (the design we replace): the same SQL fed one event at a
    time, measured on a sample (--sample) and extrapolated;
and p99 produce-to-visible latency at a fixed rate (--rate events/s for --seconds), run
on (a)'s materializer right after it caught up, before (b) and (c): a row is visible
when its partition's offset in ``consumer_offsets`` (committed with the rows) passes
it; the watcher polls every 10 ms. The phase starts right after a forced CHECKPOINT
(see settle()), and the first change of every page after a checkpoint writes the whole
page to the WAL: the first second or two are slow (window p99 382-687 ms on
2026-11-29). A live materializer meets that once per checkpoint (every 5 minutes by
default), the bench would meet it in every run at the start of a 15 s sample. So the
first --warmup seconds (default 2) are produced at the same rate but reported
separately, and the p99 is over the --seconds after them.

    .venv/bin/python -m tests.bench.bench_materializer
    .venv/bin/python -m tests.bench.bench_materializer --batch-sizes 1000,2000,5000,10000

Needs the stack (`convsync up`). Other tests sharing the CPU make the figures noisy.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from consumers.materializer.config import BatchConfig
from consumers.materializer.folding import as_timestamp, copy_row, event_row
from consumers.materializer.rows import Position, stage_row
from consumers.materializer.statements import EVENT_COLUMNS, EVENT_COPY_TYPES
from consumers.materializer.store import Store
from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, make_producer, topic_specs
from convsync.settings import Settings
from schemas.envelope import Envelope
from schemas.fold import project
from schemas.migrate import apply_migrations
from tests.bench.procstat import ServerCpu
from tests.consumers.helpers import produce, random_events
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.stack import _stack_settings

CONV_COLUMNS = (
    "page_id", "psid", "thread_id", "first_message_at", "last_message_at", "message_count",
    "last_message_text", "last_inbound_at", "last_outbound_at", "needs_reply",
    "read_watermark", "delivered_watermark", "version",
)  # fmt: skip


def fresh_schema(settings: Settings, tag: str) -> Settings:
    name = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
    with connect(settings) as conn:
        apply_migrations(conn, schema=name)
    return settings.model_copy(update={"db_schema": name})


def drop_schema(settings: Settings) -> None:
    with connect(settings) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema))
        )


def settle(settings: Settings) -> None:
    """Do now what autovacuum and the checkpointer would do during the next phase:
    VACUUM ANALYZE the tables the last phase filled, then CHECKPOINT. Measured: after
    the 200,000-event phase, autovacuum working through them on our two cores put
    p99 of the latency phase at 580-1,170 ms, against 240-270 ms with it off."""
    with connect(settings) as conn:
        for table in ("events", "conversations"):
            conn.execute(
                sql.SQL("VACUUM (ANALYZE) {}.{}").format(
                    sql.Identifier(settings.db_schema), sql.Identifier(table)
                )
            )
        conn.execute("CHECKPOINT")


def offsets_sum(
    conn: psycopg.Connection[tuple[object, ...]], settings: Settings, group: str
) -> int:
    row = conn.execute(
        sql.SQL(
            'SELECT COALESCE(sum(next_offset), 0) FROM {}.consumer_offsets WHERE "group" = %s'
        ).format(sql.Identifier(settings.db_schema)),
        (group,),
    ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Child:
    """`convsync materialize` as a child process."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        batch_size: int,
        log: Path,
        batch_ms: int | None,
        writers: int | None = None,
    ) -> None:
        self._out = log.open("ab")
        flush = [] if batch_ms is None else ["--batch-ms", str(batch_ms)]
        flush += [] if writers is None else ["--writers", str(writers)]
        # With CONVSYNC_BENCH_PROFILE=DIR it runs under tests.bench.profiled.
        runner = "tests.bench.profiled" if os.environ.get("CONVSYNC_BENCH_PROFILE") else "cli"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", runner, "materialize", "--group", group,
                "--batch-size", str(batch_size), *flush,
            ],
            cwd=REPO,
            env={**settings_env(settings), "CONVSYNC_LOG_LEVEL": "WARNING"},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._out.close()


def run_materializer(
    settings: Settings,
    total: int,
    batch_size: int,
    log: Path,
    batch_ms: int | None,
    writers: int | None = None,
) -> tuple[float, float, Child, str]:
    """(a): return events/s, peak RSS (MB), the still running child and its group."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    child = Child(settings, group, batch_size, log, batch_ms, writers)
    first_at = first_n = None
    # One connection for the whole watch: a new one every 20 ms cost Postgres a backend
    # start each time (8.5 ms per call), CPU taken from the materializer under test.
    try:
        with connect(settings) as conn:
            while True:
                n = offsets_sum(conn, settings, group)
                now = time.monotonic()
                if n and first_at is None:
                    first_at, first_n = now, n
                if n >= total:
                    break
                if child.proc.poll() is not None:
                    raise RuntimeError(f"materializer exited: {log.read_text()[-2000:]}")
                time.sleep(0.02)
    except BaseException:
        child.stop()
        raise
    assert first_at is not None and first_n is not None
    rate = (total - first_n) / max(now - first_at, 1e-9)
    return rate, peak_rss_mb(child.proc.pid), child, group


def raw_copy(
    settings: Settings,
    events: list[Envelope],
    topic: str,
    cpu: dict[str, float] | None = None,
    *,
    binary: bool = False,
) -> float:
    """(b): COPY the distinct event rows and the final conversation rows; return rows/s.
    With ``cpu``, also put there the CPU seconds of this process (``client``) and of the
    Postgres server (``server``, when it runs on this machine) over the COPY.

    Text COPY (the default, what ``COPY ... FROM STDIN`` is by hand) or, with ``binary``,
    binary COPY: the event rows as the materializer writes them (``copy_row`` with its
    dumpers), the conversation rows with the dumpers of their columns' types."""
    target = fresh_schema(settings, "copy")
    unique = list({ev.event_id: ev for ev in reversed(events)}.values())
    staged = [stage_row(ev, Position(topic, 0, i), i) for i, ev in enumerate(unique)]
    rows = [copy_row(r) if binary else event_row(r) for r in staged]
    convs = []
    ts = as_timestamp
    for state in project(events).values():
        p = state.public()
        convs.append(
            (
                p["page_id"], p["psid"], p["thread_id"], ts(p["first_message_at"]),
                ts(p["last_message_at"]), p["message_count"], p["last_message_text"],
                ts(p["last_inbound_at"]), ts(p["last_outbound_at"]), p["needs_reply"],
                ts(p["read_watermark"]), ts(p["delivered_watermark"]), 1,
            )
        )  # fmt: skip
    ident = sql.Identifier(target.db_schema)
    fmt = sql.SQL(" (FORMAT BINARY)" if binary else "")
    try:
        server = ServerCpu(target) if cpu is not None else None
        with connect(target) as conn:
            conv_types = _column_types(conn, target.db_schema, "conversations", CONV_COLUMNS)
            srv0 = server.seconds() if server is not None else None
            own0 = time.process_time()
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                for table, cols, types, data in (
                    ("events", EVENT_COLUMNS, EVENT_COPY_TYPES, rows),
                    ("conversations", CONV_COLUMNS, conv_types, convs),
                ):
                    stmt = sql.SQL("COPY {}.{} ({}) FROM STDIN{}").format(
                        ident,
                        sql.Identifier(table),
                        sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                        fmt,
                    )
                    with cur.copy(stmt) as copy:
                        if binary:
                            copy.set_types(types)
                        for row in data:
                            copy.write_row(row)
            elapsed = time.perf_counter() - started
            if cpu is not None and server is not None:
                cpu["client"] = time.process_time() - own0
                srv1 = server.seconds()
                if srv0 is not None and srv1 is not None:
                    cpu["server"] = srv1 - srv0
    finally:
        drop_schema(target)
    return len(unique) / elapsed


def _column_types(
    conn: psycopg.Connection[Any], schema: str, table: str, columns: tuple[str, ...]
) -> tuple[str, ...]:
    """The type names of ``columns`` of ``schema.table``."""
    rows = conn.execute(
        "SELECT column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        (schema, table),
    ).fetchall()
    named = {str(c): str(t) for c, t in rows}
    return tuple(named[c] for c in columns)


def per_event(settings: Settings, events: list[Envelope], topic: str, sample: int) -> float:
    """(c): one transaction per event for ``sample`` events; return events/s."""
    target = fresh_schema(settings, "single")
    store = Store(target.database_url, target.db_schema)
    try:
        started = time.perf_counter()
        for i, ev in enumerate(events[:sample]):
            row = stage_row(ev, Position(topic, i % 12, i), 0)
            store.write_batch(group="single", topic=topic, rows=[row], next_offsets={i % 12: i + 1})
        elapsed = time.perf_counter() - started
    finally:
        store.close()
        drop_schema(target)
    return sample / elapsed


def latency(
    settings: Settings, group: str, rng: random.Random, rate: int, seconds: float
) -> list[tuple[float, float]]:
    """Produce ``rate`` events/s for ``seconds``; return (produced at, produce-to-visible)
    seconds for each event, in the order they became visible."""
    topic = settings.topic("events")
    # New facts (not the pre-loaded events again): every one is a real insert.
    events = random_events(
        rng, pages=20, users=1000, n=int(rate * seconds), t0=1_800_000_000_000, mid_prefix="lat"
    )
    # Per partition, (offset, produce time) in delivery order (offsets grow).
    sent: dict[int, deque[tuple[int, float]]] = defaultdict(deque)
    done = threading.Event()
    producer = make_producer(settings, **{"linger.ms": 0})
    # A fresh producer holds its first records until it has the topic's metadata
    # (measured: ~500 ms, about 5% of a 10 s run, i.e. the whole p99). The gateway or
    # crawler in front of a live materializer is long-running, so fetch it first.
    producer.list_topics(topic, timeout=30)

    def produce_all() -> None:
        start = time.monotonic()
        for i, ev in enumerate(events):
            due = start + i / rate
            while (delay := due - time.monotonic()) > 0:
                # poll() waits whole milliseconds: a shorter timeout is 0, and this loop
                # spun a core (py-spy: the thread was busy ~90 % of the phase).
                if delay >= 0.001:
                    producer.poll(min(delay, 0.005))
                else:
                    time.sleep(delay)
            at = time.monotonic()

            def on_delivery(err: Any, msg: Any, at: float = at) -> None:
                assert err is None, err
                sent[msg.partition()].append((msg.offset(), at))

            producer.produce(topic, ev.to_bytes(), key=ev.page_id.encode(), on_delivery=on_delivery)
            producer.poll(0)  # serve delivery reports even when no wait above reached poll()
        producer.flush(30)
        done.set()

    thread = threading.Thread(target=produce_all, daemon=True)
    thread.start()
    out: list[tuple[float, float]] = []
    query = sql.SQL(
        'SELECT "partition", next_offset FROM {}.consumer_offsets WHERE "group" = %s'
    ).format(sql.Identifier(settings.db_schema))
    with connect(settings) as conn:
        while True:
            offsets = {int(p): int(n) for p, n in conn.execute(query, (group,)).fetchall()}  # type: ignore[call-overload]
            now = time.monotonic()
            for part, queue in list(sent.items()):
                while queue and queue[0][0] < offsets.get(part, 0):
                    at = queue.popleft()[1]
                    out.append((at, now - at))
            if done.is_set() and len(out) == len(events):
                break
            time.sleep(0.01)
    return out


def per_second_p99(timed: list[tuple[float, float]], t0: float) -> list[float]:
    """p99 latency (s) of the events produced in each second after ``t0``."""
    seconds: dict[int, list[float]] = defaultdict(list)
    for at, lat in timed:
        seconds[int(at - t0)].append(lat)
    return [percentile(sorted(seconds[k]), 0.99) for k in sorted(seconds)]


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument(
        "--batch-sizes",
        default=str(BatchConfig().max_records),
        help="comma-separated; default: the materializer's",
    )
    parser.add_argument(
        "--batch-ms", type=int, default=None, help="flush interval (default: the materializer's)"
    )
    parser.add_argument(
        "--writers",
        type=int,
        default=None,
        help="Postgres connections (default: the materializer's)",
    )
    parser.add_argument("--sample", type=int, default=3_000)
    parser.add_argument("--copy-runs", type=int, default=3, help="(b) runs; the median is used")
    parser.add_argument(
        "--mat-runs", type=int, default=3, help="(a) runs per batch size; the median is used"
    )
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds at --rate after the CHECKPOINT, reported apart from the p99",
    )
    args = parser.parse_args()

    base = _stack_settings()
    rng = random.Random(2026)
    pages = 20
    events = random_events(rng, pages=pages, users=args.conversations // pages, n=args.events)[
        : args.events
    ]
    print(
        f"{len(events)} events over {len({(e.page_id, e.psid) for e in events})} conversations",
        flush=True,
    )
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}"})
    admin = admin_client(settings)
    specs = topic_specs(settings)
    ensure_topics(admin, specs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-materializer-"))
    child: Child | None = None
    live: tuple[Settings, str] | None = None
    try:
        produce(settings, events)
        topic = settings.topic("events")
        results: dict[int, tuple[float, float]] = {}
        for size in [int(s) for s in args.batch_sizes.split(",")]:
            rates, peaks = [], []
            for run in range(max(1, args.mat_runs)):
                if child is not None and live is not None:
                    child.stop()
                    drop_schema(live[0])
                    child = live = None
                # Like every (b) run, every (a) run starts after a CHECKPOINT.
                with connect(settings) as conn:
                    conn.execute("CHECKPOINT")
                target = fresh_schema(settings, "mat")
                rate, rss, proc, group = run_materializer(
                    target, len(events), size, tmp / f"m{size}-{run}.log", args.batch_ms,
                    args.writers,
                )  # fmt: skip
                rates.append(rate)
                peaks.append(rss)
                child, live = proc, (target, group)
            # The median rate, the highest peak RSS of the runs.
            results[size] = (statistics.median(rates), max(peaks))
            each = ", ".join(f"{r:,.0f}" for r in rates)
            print(
                f"(a) materializer batch {size}: {results[size][0]:,.0f} events/s "
                f"(median of {len(rates)}: {each}), peak RSS {max(peaks):.0f} MB"
            )
        assert child is not None and live is not None
        # Latency first, on the materializer that just caught up: the (b) and (c) runs
        # below fill and drop schemas, whose clean-up would otherwise share the cores
        # with this phase.
        settle(live[0])
        timed = latency(live[0], live[1], rng, args.rate, args.warmup + args.seconds)
        t0 = min(at for at, _ in timed)
        lat = sorted(t for at, t in timed if at - t0 >= args.warmup)
        warm = sorted(t for at, t in timed if at - t0 < args.warmup)
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        per_second = [f"{x * 1000:.0f}" for x in per_second_p99(timed, t0)]
        n_warm = math.ceil(args.warmup)
        windows = " ".join([f"[{' '.join(per_second[:n_warm])}]", *per_second[n_warm:]])
        child.stop()
        drop_schema(live[0])
        child = live = None
        copies = []
        for _ in range(max(1, args.copy_runs)):
            with connect(settings) as conn:
                conn.execute("CHECKPOINT")
            copies.append(raw_copy(settings, events, topic))
        copy_rate = statistics.median(copies)
        runs = ", ".join(f"{c:,.0f}" for c in copies)
        print(f"(b) raw COPY: {copy_rate:,.0f} events/s (median of {len(copies)}: {runs})")
        single_rate = per_event(settings, events, topic, args.sample)
        print(
            f"(c) one transaction per event: {single_rate:,.0f} events/s "
            f"(measured on {args.sample} events, extrapolated)"
        )
        best_size, (best, rss) = max(results.items(), key=lambda kv: kv[1][0])
        print()
        print(f"best batch size {best_size}: (a) {best:,.0f} events/s, peak RSS {rss:.0f} MB")
        print(f"(a)/(b) = {best / copy_rate:.2f}   (target >= 0.6)")
        print(f"(a)/(c) = {best / single_rate:.1f}   (target >= 25)")
        print(
            f"latency at {args.rate}/s over {len(lat)} events after a {args.warmup:g} s "
            f"warm-up: p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms (target p99 <= 500 ms)"
        )
        if warm:
            print(
                f"  warm-up (the first {args.warmup:g} s after the CHECKPOINT, not in the "
                f"figures above): {len(warm)} events, p50 {percentile(warm, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(warm, 0.99) * 1000:.0f} ms"
            )
        print(f"  p99 of the events produced in each second (ms, warm-up in []): {windows}")
    finally:
        if child is not None:
            child.stop()
        if live is not None:
            drop_schema(live[0])
        admin.delete_topics([s.name for s in specs], operation_timeout=30)


if __name__ == "__main__":
    main()
