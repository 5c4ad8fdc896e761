"""`load`: 50 readers while the materializer ingests 5,000 events/s, in one run.

Phases, in this order, on the data set of ``generate`` and fresh topics:

1. readers alone, plain SQL, then through the admin API (the baselines of the reads);
2. ingest alone: a producer at ``--rate`` events/s into ``<prefix>.events``, consumed by
   ``convsync materialize`` (a child process, default settings) into the data set;
3. ingest with the SQL readers, then with the API readers;
4. capacity: a backlog of ``--backlog`` events produced at once and drained by the
   materializer as fast as it can, alone and then with the SQL readers (the ratio of the
   two rates is what read load costs the materializer when it is the bottleneck; at a
   fixed 5,000 events/s it only shows whether it keeps up).

The events are new facts of existing conversations (and 2 % new conversations), made
like the data set's (the simulator's items through the gateway's mapping). Readers are
a child process per phase (``readers``); the admin API is the admin application on a
server of its own (``serve``). Printed: the load average, each query's percentiles,
events/s stored per phase and the ratios, the materializer's CPU per event.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from psycopg import sql

from consumers.materializer.config import BatchConfig
from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, make_producer, topic_specs
from convsync.settings import Settings
from producers.webhook.mapping import map_item
from tests.bench.bench_materializer import Child
from tests.bench.procstat import ServerCpu, cpu_seconds, peak_rss_mb
from tests.bench.read_path.dataset import stored_shape
from tests.bench.read_path.gen import OTHER_KINDS, FastSender
from tests.bench.read_path.queries import percentiles
from tests.bench.read_path.server import AdminServer
from tests.bench.read_path.shape import Shape
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.kafka import delete_topics_of


def add_parser(sub: Any) -> None:
    """Add the ``load`` subcommand."""
    p = sub.add_parser("load", help="readers while the materializer ingests")
    p.add_argument("--readers", type=int, default=50)
    p.add_argument("--think", type=float, default=1.0, help="mean seconds between reads")
    p.add_argument("--rate", type=int, default=5000, help="events/s produced")
    p.add_argument("--seconds", type=float, default=60, help="length of an ingest phase")
    p.add_argument("--read-seconds", type=float, default=30, help="length of a read phase")
    p.add_argument("--backlog", type=int, default=150_000, help="events of a capacity phase")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the materializer and its Postgres backends at this niceness (root), so"
        " the readers come first for the CPU",
    )
    add_seed(p)
    p.set_defaults(run=run)


def renice(settings: Settings, pid: int, nice: int) -> int:
    """Set the niceness of process ``pid`` (every thread) and of the Postgres backends of
    the materializer (application_name); return how many backends."""
    tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'convsync-materializer'"
        ).fetchall()
    for target in [*tids, *(int(r[0]) for r in rows)]:
        os.setpriority(os.PRIO_PROCESS, target, nice)
    return len(rows)


def add_seed(parser: Any) -> None:
    """Add ``--seed``: the events' seed, new for every run unless given."""
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the events (default: a new one each run; the same seed twice sends"
        " the same messages again, which the materializer then merges as copies)",
    )


def run_seed(args: Any) -> int:
    """Return the run's seed (``--seed`` or a new one) and print it."""
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"seed {seed}", flush=True)
    return int(seed)


def new_events(shape: Shape, n: int, seed: int, t0_ms: int, rate: int) -> list[tuple[bytes, bytes]]:
    """Return ``n`` (key, value) records: new events of the data set's conversations,
    timed ``rate`` per second from ``t0_ms``. Their messages are new only for a seed not
    used on the data set before: with the same seed the mids repeat, and the events are
    copies of stored ones, merged row by row (a slower path the rates would then show)."""
    rng = random.Random(seed)
    sender = FastSender(app_secret="read-path-load", seed=seed)
    starts = []
    at = 0
    for size in shape.page_sizes:
        starts.append(at)
        at += size
    out = []
    for i in range(n):
        g = rng.randrange(shape.conversations)
        page = bisect.bisect_right(starts, g) - 1
        index = g - starts[page]
        if rng.random() < 0.02:
            index = shape.page_sizes[page] + rng.randrange(10**6)  # a new conversation
        page_id, psid = shape.page_id(page), shape.psid(page, index)
        sender.clock = t0_ms + i * 1000 // rate
        roll = rng.random()
        kind = (
            "message"
            if roll < 0.45
            else "echo"
            if roll < 0.75
            else "read"
            if roll < 0.87
            else ("delivery" if roll < 0.97 else rng.choice(OTHER_KINDS))
        )
        item = sender.item(kind, page_id, psid)
        ev = map_item(page_id, item.get("timestamp"), item, "messaging")
        out.append((page_id.encode(), ev.to_bytes()))
    return out


TICK = 0.02  # seconds between a paced producer's bursts


class Producer:
    """Produces records at a rate in a thread, from a shared list, phase by phase."""

    def __init__(self, settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
        self.topic = settings.topic("events")
        self.records = records
        self.next = 0
        self.producer = make_producer(settings, **{"linger.ms": 5})
        self.producer.list_topics(self.topic, timeout=30)

    def run_for(self, rate: int, seconds: float) -> int:
        """Produce ``rate`` records/s for ``seconds`` (in this thread); return how many.

        The records due are produced every ``TICK`` seconds, then the thread sleeps:
        pacing each record alone spun on sub-millisecond polls and took half a core of
        the two that the materializer and Postgres share here."""
        start, n, sent = time.monotonic(), int(rate * seconds), 0
        while sent < n:
            due = min(n, int((time.monotonic() - start) * rate) + 1)
            for _ in range(due - sent):
                self._one()
            sent = due
            self.producer.poll(0)  # delivery reports
            time.sleep(TICK)
        self.producer.flush(60)
        return n

    def burst(self, n: int) -> int:
        """Produce ``n`` records as fast as Kafka takes them."""
        for _ in range(n):
            self._one()
        self.producer.flush(120)
        return n

    def _one(self) -> None:
        key, value = self.records[self.next % len(self.records)]
        self.next += 1
        while True:
            try:
                self.producer.produce(self.topic, value, key=key)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)


def stored(settings: Settings, group: str) -> int:
    """Sum of the materializer's next offsets in Postgres."""
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL(
                'SELECT COALESCE(sum(next_offset), 0) FROM {}.consumer_offsets WHERE "group" = %s'
            ).format(sql.Identifier(settings.db_schema)),
            (group,),
        ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def wait_stored(settings: Settings, group: str, target: int, timeout: float) -> float:
    """Wait until ``target`` offsets are stored; return when (monotonic)."""
    deadline = time.monotonic() + timeout
    while stored(settings, group) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"materializer did not store {target} offsets in {timeout} s")
        time.sleep(0.05)
    return time.monotonic()


def start_readers(
    settings: Settings, args: argparse.Namespace, mode: str, seconds: float, base: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "tests.bench.read_path", "--schema", args.schema,
        "--topic-prefix", settings.topic_prefix, "readers", "--mode", mode,
        "--readers", str(args.readers), "--seconds", str(seconds), "--think", str(args.think),
        "--base", base,
    ]  # fmt: skip
    env = {**settings_env(settings), "CONVSYNC_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE)


def finish_readers(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"readers exited {proc.returncode}")
    return dict(orjson.loads(out.strip().splitlines()[-1]))


def report_readers(label: str, result: dict[str, Any], api_cpu: float | None = None) -> None:
    """Print a readers phase: reads, errors, the CPU per read of the readers' process and
    (``api_cpu``, seconds) of the admin API's, and each query's percentiles."""
    total = sum(len(v) for v in result["latencies"].values())
    per_read = 1000 / max(1, total)
    api = "" if api_cpu is None else f", admin API {api_cpu * per_read:.2f}"
    print(
        f"  {label}: {total} reads in {result['seconds']:.0f} s"
        f" ({total / result['seconds']:.0f}/s), {result['error_count']} errors;"
        f" CPU ms/read: readers {result['cpu_seconds'] * per_read:.2f}{api}"
    )
    for err in result["errors"][:3]:
        print(f"    error: {err}")
    for kind, values in result["latencies"].items():
        print(f"    {kind:18} {percentiles(values)}  ({len(values)})")


def p99(values: list[float]) -> str:
    """The 99th percentile of seconds, in ms (by rank)."""
    if not values:
        return "-"
    v = sorted(values)
    return f"{v[min(len(v) - 1, int(0.99 * len(v)))] * 1000:.1f}"


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``load`` subcommand."""
    base_settings = settings.model_copy(
        update={"db_schema": args.schema, "topic_prefix": f"rpload{uuid.uuid4().hex[:8]}"}
    )
    s = base_settings
    shape = stored_shape(s, args.schema)
    ensure_topics(admin_client(s), topic_specs(s))
    n_ingest = int(args.rate * args.seconds) * 3 + 2 * args.backlog + 1000
    print(f"making {n_ingest} events ...", flush=True)
    records = new_events(shape, n_ingest, run_seed(args), int(time.time() * 1000), args.rate)
    producer = Producer(s, records)
    group = f"rpload-{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.mkstemp(prefix="read-path-materializer-", suffix=".log")[1])
    print(f"load average {os.getloadavg()[0]:.1f} at the start (2 cores, shared machine)")
    with AdminServer(s, args.schema) as server:
        results: dict[str, dict[str, Any]] = {}
        # 1. Readers alone.
        for mode in ("sql", "api"):
            load, api0 = os.getloadavg()[0], cpu_seconds(server.proc.pid)
            results[f"{mode} alone"] = finish_readers(
                start_readers(s, args, mode, args.read_seconds, server.base)
            )
            print(f"readers alone ({mode}), load {load:.1f}:")
            api_cpu = cpu_seconds(server.proc.pid) - api0
            report_readers(mode, results[f"{mode} alone"], api_cpu if mode == "api" else None)
        child = Child(s, group, BatchConfig().max_records, log, None)
        pid = child.proc.pid
        server_cpu = ServerCpu(s)
        try:
            # The first batch joins the group and warms up: not timed.
            producer.burst(1000)
            wait_stored(s, group, 1000, 120)
            if args.nice:
                backends = renice(s, pid, args.nice)
                print(f"materializer and its {backends} Postgres backends at nice {args.nice}")
            rates: dict[str, float] = {}
            # 2-3. Ingest at the rate, alone and with each kind of reader.
            for phase, mode in (("ingest alone", None), ("ingest + SQL readers", "sql"),
                                ("ingest + API readers", "api")):  # fmt: skip
                load = os.getloadavg()[0]
                readers = start_readers(s, args, mode, args.seconds, server.base) if mode else None
                before, t0 = stored(s, group), time.monotonic()
                cpu0, srv0 = cpu_seconds(pid), server_cpu.seconds()
                api0 = cpu_seconds(server.proc.pid)
                sent = producer.run_for(args.rate, args.seconds)
                after, t1 = stored(s, group), time.monotonic()
                cpu1, srv1 = cpu_seconds(pid), server_cpu.seconds()
                rates[phase] = (after - before) / (t1 - t0)
                lag = before + sent - after
                per = 1e6 / max(1, after - before)
                srv = (
                    "" if srv0 is None or srv1 is None else f", Postgres {(srv1 - srv0) * per:.0f}"
                )
                print(
                    f"{phase}, load {load:.1f}: {rates[phase]:,.0f} events/s stored"
                    f" of {sent / (t1 - t0):,.0f} produced, lag at the end {lag};"
                    f" CPU µs/event: materializer {(cpu1 - cpu0) * per:.0f}{srv}"
                )
                if readers is not None:
                    results[phase] = finish_readers(readers)
                    api_cpu = cpu_seconds(server.proc.pid) - api0
                    report_readers(mode or "", results[phase], api_cpu if mode == "api" else None)
                wait_stored(s, group, before + sent, 300)
            # 4. Capacity: a backlog produced at once, drained as fast as the materializer
            # goes (it reads while the records arrive; Kafka takes them faster).
            for phase, mode in (("drain alone", None), ("drain + SQL readers", "sql")):
                readers = start_readers(s, args, mode, 3600, server.base) if mode else None
                if readers is not None:
                    time.sleep(min(5.0, args.read_seconds))  # the readers are reading
                load = os.getloadavg()[0]
                start_at, t0 = stored(s, group), time.monotonic()
                producer.burst(args.backlog)
                t1 = wait_stored(s, group, start_at + args.backlog, 900)
                rates[phase] = args.backlog / (t1 - t0)
                print(f"{phase}, load {load:.1f}: {rates[phase]:,.0f} events/s")
                if readers is not None:
                    readers.terminate()
                    readers.wait(60)
            print(f"materializer peak RSS {peak_rss_mb(pid):.0f} MB")
        finally:
            child.stop()
            delete_topics_of(s)
    alone = rates["ingest alone"]
    for phase in ("ingest + SQL readers", "ingest + API readers"):
        print(f"ingest under read load / alone ({phase}) = {rates[phase] / alone:.2f}")
    drain = rates["drain + SQL readers"] / rates["drain alone"]
    print(f"drain capacity with SQL readers / alone = {drain:.2f}")
    print("p99 ms by query:  SQL alone / SQL + ingest / API alone / API + ingest")
    for kind in results["sql alone"]["latencies"]:
        cells = [
            p99(results[phase]["latencies"][kind])
            for phase in ("sql alone", "ingest + SQL readers", "api alone", "ingest + API readers")
        ]
        print(f"  {kind:18} " + " / ".join(cells))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    log.unlink()
    return 0
