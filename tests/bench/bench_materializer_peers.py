"""Benchmark: the materializer side by side with a Quix Streams PostgreSQL sink and raw COPY.

The same N realistic events (``peer_events``: the simulator's webhook items through the
gateway's mapping, with crawler copies and Meta's retries) on one ``<prefix>.events``,
consumed in alternating rounds (a, b, c, a, b, c, ...) so a noisy machine hits every
side alike:

(a) ``convsync materialize`` (a child process, default settings): event rows, the
    conversation fold and the partition offsets, exactly once, into a fresh schema;
(b) a Quix Streams application (``tests/bench/quix_apps.py sink``, a child process,
    default settings) writing the same event rows with
    ``quixstreams.sinks.community.postgresql.PostgreSQLSink``, at least once, into a
    table of the same shape in its own fresh schema. The table is not called
    ``events``: the sink finds a table's primary key by joining constraint names
    without their schema, and every migrated schema has an ``events_pkey``;
(c) a raw COPY of the distinct event rows and the final conversation rows into a fresh
    schema's tables, one transaction (``bench_materializer.raw_copy``, that bench's
    baseline): what any design is bounded by, in COPY's default text format;
(d) the same in binary COPY, the format (a) writes its rows in since 2026-12-07: the
    tighter bound.

(a) and (b) are timed the same way, from their first durable progress to the last
(start-up, group join and what the first commit covered are left out): (a) by the
offsets it stores in Postgres with the rows, (b) by the offsets Quix commits to Kafka
after its sink flushed (at each checkpoint, every 5 s by default, and at its final one
once it processed the N records). Each side's CPU seconds per event (its own process
and the Postgres server) over the same span are printed as well: they swing far less
than rates on a shared machine. The load average before each run is printed with it.

    .venv/bin/python -m tests.bench.bench_materializer_peers [--events 200000 --rounds 3]

Needs the stack (``convsync up``); ``quixstreams`` runs in ``.venv-peers``
(tests/bench/peers_venv.py, made on first use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from consumers.materializer.config import BatchConfig
from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from schemas.envelope import Envelope
from tests.bench import peers_venv
from tests.bench.bench_materializer import Child, drop_schema, fresh_schema, offsets_sum, raw_copy
from tests.bench.peer_events import realistic_events
from tests.bench.procstat import ServerCpu, cpu_seconds, peak_rss_mb
from tests.consumers.helpers import produce
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.stack import _stack_settings

SIDES = ("convsync", "quix", "copy", "copy-binary")
LABELS = {
    "convsync": "(a) convsync materialize",
    "quix": "(b) Quix Streams + PostgreSQLSink",
    "copy": "(c) raw COPY",
    "copy-binary": "(d) raw binary COPY",
}
# The columns a row can lose (see check_quix_rows) and the values they should hold.
CHECKED = ("mid", "direction", "text", "watermark", "thread_id", "num_edit")


@dataclass
class Run:
    side: str
    rate: float  # events/s
    load: float  # 1-minute load average just before the run
    cpu_us: float | None = None  # the side's process, CPU us per event
    server_us: float | None = None  # the Postgres server, CPU us per event
    rss_mb: float | None = None


def watch(
    progress: Callable[[], int], total: int, pid: int, server: ServerCpu, alive: Callable[[], bool]
) -> tuple[float, float, float | None, float]:
    """Poll ``progress`` (records durably done) until it reaches ``total``; return
    events/s, process and server CPU us per event from the first progress to the last,
    and the peak RSS (MB)."""
    first_at = first_n = None
    cpu0 = srv0 = 0.0
    rss = float("nan")
    while True:
        n = progress()
        now = time.monotonic()
        rss = max(peak_rss_mb(pid), rss) if rss == rss else peak_rss_mb(pid)
        if n and first_at is None:
            first_at, first_n = now, n
            cpu0, srv0 = cpu_seconds(pid), server.seconds() or 0.0
        if n >= total:
            break
        if not alive():
            raise RuntimeError(f"the side under test exited at {n}/{total} records")
        time.sleep(0.02)
    assert first_at is not None and first_n is not None
    if first_n >= total:  # every row arrived between two polls: nothing to time
        nan = float("nan")
        return nan, nan, None, rss
    counted = total - first_n
    cpu1 = cpu_seconds(pid) if alive() else cpu0
    srv1 = server.seconds()
    server_us = None if srv1 is None else (srv1 - srv0) / counted * 1e6
    return counted / max(now - first_at, 1e-9), (cpu1 - cpu0) / counted * 1e6, server_us, rss


def run_convsync(settings: Settings, total: int, log: Path, server: ServerCpu) -> Run:
    """(a): return its figures; its schema is dropped afterwards."""
    target = fresh_schema(settings, "mat")
    group = f"bench-{uuid.uuid4().hex[:8]}"
    child = Child(target, group, BatchConfig().max_records, log, None)
    load = os.getloadavg()[0]
    try:
        with connect(target) as conn:
            rate, cpu, srv, rss = watch(
                lambda: offsets_sum(conn, target, group),
                total,
                child.proc.pid,
                server,
                lambda: child.proc.poll() is None,
            )
    finally:
        child.stop()
        drop_schema(target)
    return Run("convsync", rate, load, cpu, srv, rss)


def quix_table(target: Settings, tag: str) -> str:
    """Create the sink's table (the shape of ``events``) in ``target``'s schema; return its name."""
    table = f"quix_events_{tag}"
    schema = sql.Identifier(target.db_schema)
    with connect(target) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (LIKE {}.events INCLUDING ALL)").format(
                schema, sql.Identifier(table), schema
            )
        )
    return table


def committed_sum(reader: Consumer, topic: str, partitions: int) -> int:
    tps = reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    return sum(max(tp.offset, 0) for tp in tps)


def run_quix(
    settings: Settings, events: list[Envelope], log: Path, server: ServerCpu, check: bool
) -> Run:
    """(b): return its figures; with ``check``, also print what its rows lost."""
    tag = uuid.uuid4().hex[:8]
    target = fresh_schema(settings, "quix")
    table = quix_table(target, tag)
    group = f"{settings.topic_prefix}.quix-{tag}"
    total = len(events)
    out = log.open("ab")
    args = [peers_venv.python(), "-m", "tests.bench.quix_apps", "sink", group, table, str(total)]
    env = {**settings_env(target), "CONVSYNC_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    reader = Consumer({**settings.kafka_config(), "group.id": group})
    load = os.getloadavg()[0]
    topic = settings.topic("events")
    try:
        rate, cpu, srv, rss = watch(
            lambda: committed_sum(reader, topic, settings.partitions),
            total,
            proc.pid,
            server,
            lambda: proc.poll() is None,
        )
        proc.wait(120)
        if check:
            check_quix_rows(target, table, events)
    finally:
        reader.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        out.close()
        drop_schema(target)
    return Run("quix", rate, load, cpu, srv, rss)


def check_quix_rows(target: Settings, table: str, events: list[Envelope]) -> None:
    """Print how many of the sink's rows miss a value the event has (a column the sink
    left out of a batch) and how many rows it wrote, against the distinct events."""
    first: dict[str, Envelope] = {}
    for ev in events:
        first.setdefault(ev.event_id, ev)
    query = sql.SQL("SELECT event_id, mid, direction, text, watermark, thread_id FROM {}.{}")
    with connect(target) as conn:
        rows = conn.execute(
            query.format(sql.Identifier(target.db_schema), sql.Identifier(table))
        ).fetchall()
    lost = 0
    for event_id, mid, direction, text, watermark, thread_id in rows:
        ev = first[str(event_id)]
        stored = (mid, direction, text, watermark, thread_id)
        wanted = (ev.mid, ev.direction, ev.text, ev.watermark, ev.thread_id)
        if any(s is None and w is not None for s, w in zip(stored, wanted, strict=True)):
            lost += 1
    print(
        f"    (b) wrote {len(rows):,} rows for {len(first):,} distinct events; "
        f"{lost:,} rows miss a value their event has (mid, direction, text, watermark or "
        f"thread id)",
        flush=True,
    )


def run_copy(settings: Settings, events: list[Envelope], *, binary: bool) -> Run:
    """(c) or (d): its figures; CPU per row written (the distinct events), as its rate."""
    load = os.getloadavg()[0]
    cpu: dict[str, float] = {}
    rate = raw_copy(settings, events, settings.topic("events"), cpu, binary=binary)
    rows = len({e.event_id for e in events})
    server = cpu.get("server")
    return Run(
        "copy-binary" if binary else "copy",
        rate,
        load,
        cpu["client"] / rows * 1e6,
        None if server is None else server / rows * 1e6,
    )


def summary(runs: list[Run], sides: tuple[str, ...]) -> None:
    print()
    med: dict[str, float] = {}
    for side in sides:
        mine = [r for r in runs if r.side == side]
        # A round whose every row arrived between two polls has no rate (nan): left out.
        rates = [r.rate for r in mine if r.rate == r.rate]
        med[side] = statistics.median(rates) if rates else float("nan")
        untimed = len(mine) - len(rates)
        line = (
            f"{LABELS[side]}: median {med[side]:,.0f} events/s "
            f"(min {min(rates, default=med[side]):,.0f}, max {max(rates, default=med[side]):,.0f}, "
            f"n={len(rates)}{f', {untimed} round(s) not timed' if untimed else ''})"
        )
        cpus = [r.cpu_us for r in mine if r.cpu_us is not None and r.cpu_us == r.cpu_us]
        srvs = [r.server_us for r in mine if r.server_us is not None]
        if cpus:
            line += f"; CPU/event: process {statistics.median(cpus):.0f} us"
        if srvs:
            line += f", Postgres {statistics.median(srvs):.0f} us"
        rss = [r.rss_mb for r in mine if r.rss_mb is not None]
        if rss:
            line += f"; peak RSS {max(rss):.0f} MB"
        print(line)
    rounds = [runs[i : i + len(sides)] for i in range(0, len(runs), len(sides))]
    print()
    names = {"quix": "Quix sink", "copy": "raw COPY", "copy-binary": "raw binary COPY"}
    for side, target in (("quix", "2.5"), ("copy", "0.8"), ("copy-binary", "0.8")):
        if side not in sides or "convsync" not in sides:
            continue
        a, b = sides.index("convsync"), sides.index(side)
        per_round = ", ".join(f"{r[a].rate / r[b].rate:.2f}" for r in rounds)
        name = f"{names[side]:<15}"
        print(
            f"convsync / {name} = {med['convsync'] / med[side]:.2f} "
            f"(per round: {per_round})   (target >= {target})"
        )
    loads = [r.load for r in runs]
    print(f"load average (1 min) before the runs: {min(loads):.1f}-{max(loads):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help="which sides to run, in this order each round (default: all three)",
    )
    args = parser.parse_args()
    sides = tuple(args.sides.split(","))
    if not sides or set(sides) - set(SIDES):
        parser.error(f"--sides: a comma-separated subset of {', '.join(SIDES)}")

    base = _stack_settings()
    events = realistic_events(
        args.seed, pages=args.pages, conversations=args.conversations, n=args.events
    )
    print(
        f"{len(events):,} events ({len({e.event_id for e in events}):,} distinct) over "
        f"{len({(e.page_id, e.psid) for e in events}):,} conversations, "
        f"{sum(len(e.to_bytes()) for e in events) / len(events):.0f} bytes each on average",
        flush=True,
    )
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}"})
    admin = admin_client(settings)
    specs = topic_specs(settings)
    ensure_topics(admin, specs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    server = ServerCpu(settings)
    runs: list[Run] = []
    try:
        produce(settings, events)
        for i in range(args.rounds):
            for side in sides:
                # Every run starts after a CHECKPOINT, as in bench_materializer.
                with connect(settings) as conn:
                    conn.execute("CHECKPOINT")
                if side == "convsync":
                    run = run_convsync(settings, len(events), tmp / f"a{i}.log", server)
                elif side == "quix":
                    run = run_quix(settings, events, tmp / f"b{i}.log", server, check=i == 0)
                else:
                    run = run_copy(settings, events, binary=side == "copy-binary")
                runs.append(run)
                extra = "" if run.cpu_us is None else f", {run.cpu_us:.0f} us CPU/event"
                if run.server_us is not None:
                    extra += f" + Postgres {run.server_us:.0f} us"
                print(
                    f"round {i + 1} {LABELS[side]}: {run.rate:,.0f} events/s{extra} "
                    f"(load {run.load:.1f})",
                    flush=True,
                )
        summary(runs, sides)
    finally:
        names = [s.name for s in specs]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result(timeout=30)
        print(f"logs: {tmp}")


if __name__ == "__main__":
    main()
