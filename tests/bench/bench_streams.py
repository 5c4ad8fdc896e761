"""Benchmark: the convsync change stream side by side with Quix Streams and a plain loop.

The same pre-loaded ``<prefix>.events`` folded by the same ``streams.change.step`` into
the same change records, by:

(a) ``convsync streams`` (the faust worker, a child process, default settings);
(b) a Quix Streams application (``tests/bench/quix_apps.py fold``, a child process,
    default settings: at-least-once, the state in RocksDB with its changelog topic);
(c) a plain confluent-kafka loop in this process: state in a dict, no changelog, one
    process (the limit of this design);

and optionally ``faust-eos`` (the worker under exactly_once) and ``intake`` (faust with a
no-op handler). Rounds alternate the sides (a, b, c, a, b, c, ...); each run gets its own
topics. A worker (a, b) gets the events once it has started (:func:`settle`: its topics
made, its group stable, every partition served); the plain loop finds them there.
Timing starts at a side's first change record and ends at its last (read back from
``<prefix>.conversations``; the plain loop times itself from its first record to its
last acknowledged one), so start-up and recovery are excluded. Also printed: each
side's CPU per event over the same span, and the load average before each run.

    .venv/bin/python -m tests.bench.bench_streams [--events 10000 --rounds 3]
    .venv/bin/python -m tests.bench.bench_streams --sides plain,faust,faust-eos,intake
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-no-f11  # F11 pays?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-no-f12  # F12 pays?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-no-f13  # F13 pays?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-no-f14  # F14 pays?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-serial  # pipeline pays?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-depth1  # depth 4 pays?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-unstaged  # stages pay?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-thread-acks  # loop acks?
    .venv/bin/python -m tests.bench.bench_streams --sides faust,faust-no-f15  # F15 pays?

With ``CONVSYNC_BENCH_PROFILE=DIR`` the faust worker runs under ``tests.bench.profiled``
(profile, per-batch timings and the worker's CPU by thread written to DIR and printed);
``CONVSYNC_BENCH_NICE=N`` runs it at niceness N. Needs the stack (``convsync up``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, ConsumerGroupState, TopicPartition

from convsync.kafka import (
    TopicSpec,
    admin_client,
    ensure_topics,
    make_consumer,
    make_producer,
    topic_specs,
)
from convsync.settings import Settings
from deploy.ports import free_ports
from schemas.conversation import conversation_key
from schemas.envelope import Envelope
from streams.app import app_id
from streams.change import MemorySide, StreamState, encode_change, step
from tests.bench import peers_venv
from tests.bench.procstat import cpu_seconds, thread_cpu
from tests.fixtures.stack import _stack_settings
from tests.streams.events import conversation_events, produce
from tests.streams.test_change import fold_all


def baseline(settings: Settings, expected: int) -> tuple[float, float]:
    """Run the plain consume-fold-produce loop; return its events/s and CPU s/event."""
    out_topic = settings.topic("baseline")
    consumer = make_consumer(settings, f"{settings.topic_prefix}.baseline")
    consumer.subscribe([settings.topic("events")])
    producer = make_producer(settings)
    states: dict[str, StreamState] = {}
    side = MemorySide()
    events = emitted = 0
    started: float | None = None
    cpu_start = 0.0
    try:
        while emitted < expected:
            batch = consumer.consume(1000, timeout=1.0)
            if not batch:
                continue
            if started is None:
                started, cpu_start = time.perf_counter(), time.process_time()
            for msg in batch:
                event = Envelope.from_bytes(msg.value())
                key = conversation_key(event.page_id, event.psid)
                result = step(states.get(key), event, side)
                side.record(result)
                states[key] = result.state
                events += 1
                if result.emitted:
                    value = encode_change(result, event)
                    producer.produce(out_topic, key=key.encode(), value=value)
                    emitted += 1
                producer.poll(0)
                consumer.store_offsets(message=msg)
            # The same guarantee as the faust app: records acknowledged, then offsets.
            producer.flush(30)
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert started is not None
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_start
    return events / elapsed, cpu / events


def readback(
    proc: subprocess.Popen[bytes], settings: Settings, expected: int, n_events: int
) -> tuple[float, float]:
    """Read ``<prefix>.conversations`` until ``expected`` change records arrived; return
    the events/s of the worker ``proc`` (first to last record) and its CPU seconds per
    event over the same span. Stops the worker."""
    reader = Consumer({**settings.kafka_config(), "group.id": "bench-reader"})
    topic = settings.topic("conversations")
    reader.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    seen = 0
    first = last = 0.0
    cpu_first = cpu_last = 0.0
    threads_first: dict[str, float] = {}
    threads_last: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 600
        while seen < expected:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the worker failed with {seen}/{expected} records")
            msgs = reader.consume(1000, timeout=0.5)
            if msgs:
                if not first:
                    first, cpu_first = time.perf_counter(), cpu_seconds(proc.pid)
                    threads_first = thread_cpu(proc.pid)
                last, cpu_last = time.perf_counter(), cpu_seconds(proc.pid)
                seen += len(msgs)
        threads_last = thread_cpu(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.close()
    if os.environ.get("CONVSYNC_BENCH_PROFILE"):
        by_thread = {
            name: (seconds - threads_first.get(name, 0.0)) / n_events * 1e6
            for name, seconds in threads_last.items()
        }
        each = ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_thread.items()) if v >= 0.5)
        print(f"    worker CPU by thread, us/event: {each}", flush=True)
    return n_events / (last - first), (cpu_last - cpu_first) / n_events


def settle(settings: Settings, proc: subprocess.Popen[bytes], group: str) -> None:
    """Wait until the side ``proc`` has started: it made its topics (faust's table
    changelogs, Quix's), its consumer ``group`` is stable with partitions assigned, and
    the broker serves every partition of every topic of the run. The caller produces the
    events only then, so the timed span is the processing, not the start.

    Why: a side creates its changelog topics as it starts (ten of 12 partitions for the
    convsync worker), and the broker makes each partition's files after the create
    returns; with the events loaded before the start, the first batches were timed while
    the broker was still doing that. This does not remove the slow rounds
    (docs/performance.md, "2026-12-06": the broker answering produce requests late).
    """
    admin = admin_client(settings)
    probe = Consumer({**settings.kafka_config(), "group.id": "bench-settle"})
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the side exited with {proc.returncode} before it started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the side did not start within 120 s (group {group})")
            described = admin.describe_consumer_groups([group])[group].result(timeout=10)
            assigned = any(m.assignment.topic_partitions for m in described.members)
            if described.state == ConsumerGroupState.STABLE and assigned:
                break
            time.sleep(0.2)
        topics = admin.list_topics(timeout=10).topics
        for name, meta in topics.items():
            if settings.topic_prefix in name:
                for partition in meta.partitions:
                    # Answers once the partition's log exists on the broker.
                    probe.get_watermark_offsets(TopicPartition(name, partition), timeout=30)
    finally:
        probe.close()


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_PARTITIONS": str(settings.partitions),
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }


def through_faust(
    settings: Settings,
    expected: int,
    feed: Callable[[], int],
    *,
    guarantee: str,
    without: str = "",
) -> tuple[float, float]:
    """Run `convsync streams`, then ``feed`` the events topic once it started (:func:`settle`);
    return its events/s (first to last record) and the worker's CPU seconds per event over
    the same span.

    Each run starts over (fresh consumer group via a fresh faust data dir is not enough:
    the group and tables derive from the prefix), so the caller uses a fresh prefix.
    With CONVSYNC_BENCH_PROFILE set, the worker runs under ``tests.bench.profiled``
    (profiles and per-batch timings, see there).
    """
    with tempfile.TemporaryDirectory() as tmp:
        args = ["streams", "--web-port", str(free_ports()), "--data-dir", tmp]
        args += ["--guarantee", guarantee]
        if without:
            # The worker with fixes of streams/faust_fixes.py switched off (see main).
            cmd = [sys.executable, "-m", "tests.bench.bench_streams", WITHOUT, without, *args]
        elif os.environ.get("CONVSYNC_BENCH_PROFILE"):
            cmd = [sys.executable, "-m", "tests.bench.profiled", *args]
        else:
            cmd = [str(Path(sys.executable).parent / "convsync"), *args]
        if os.environ.get("CONVSYNC_BENCH_NICE"):
            # An analysis aid: the worker at another priority (root may pass -15).
            cmd = ["nice", "-n", os.environ["CONVSYNC_BENCH_NICE"], *cmd]
        proc = subprocess.Popen(cmd, env=worker_env(settings))
        return fed(proc, settings, app_id(settings), expected, feed)


def through_quix(settings: Settings, expected: int, feed: Callable[[], int]) -> tuple[float, float]:
    """Run the Quix Streams fold (``quix_apps fold``), then ``feed``; same figures."""
    with tempfile.TemporaryDirectory() as tmp:
        group = f"{settings.topic_prefix}.quix"
        args = [peers_venv.python(), "-m", "tests.bench.quix_apps", "fold", group, tmp]
        proc = subprocess.Popen(args, env=worker_env(settings))
        return fed(proc, settings, group, expected, feed)


def fed(
    proc: subprocess.Popen[bytes],
    settings: Settings,
    group: str,
    expected: int,
    feed: Callable[[], int],
) -> tuple[float, float]:
    """Wait for the side ``proc`` to start, feed it, and read its records back."""
    try:
        settle(settings, proc, group)
    except BaseException:
        proc.kill()
        proc.wait(60)
        raise
    return readback(proc, settings, expected, feed())


def intake_only(prefix: str, n_events: int) -> None:
    """(Subprocess mode) faust with a no-op batch handler: print its events/s and exit."""
    import faust

    import streams.app as streams_app

    settings = _stack_settings().model_copy(update={"topic_prefix": prefix})
    seen = {"events": 0, "first": 0.0}

    async def noop(_self: object, events: list[object]) -> None:
        now = time.perf_counter()
        seen["first"] = seen["first"] or now
        seen["events"] += len(events)
        if seen["events"] >= n_events:
            print(f"RATE {n_events / (now - seen['first']):.0f}", flush=True)

    streams_app.Folder.process = noop  # type: ignore[method-assign,assignment]
    with tempfile.TemporaryDirectory() as tmp:
        config = streams_app.StreamConfig(web_port=free_ports(), data_dir=Path(tmp))
        app = streams_app.make_app(settings, config)
        worker = faust.Worker(app, loglevel="WARNING", redirect_stdouts=False)
        worker.spinner = None
        worker.execute_from_commandline()


def faust_intake(settings: Settings, n_events: int) -> float:
    """Return the events/s faust delivers to a handler that does nothing."""
    args = [sys.executable, "-m", "tests.bench.bench_streams", "--intake-only"]
    args += [settings.topic_prefix, "--events", str(n_events)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("RATE "):
                return float(line.split()[1])
        raise RuntimeError("the intake run ended without a rate")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def fresh(base: Settings, extra: list[str]) -> tuple[Settings, list[TopicSpec]]:
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}"})
    specs = [*topic_specs(settings), *(TopicSpec(settings.topic(x), 12, 1, {}) for x in extra)]
    ensure_topics(admin_client(settings), specs)
    return settings, specs


LABELS: Final = {
    "plain": "(c) plain confluent-kafka loop (fold + produce + commit)",
    "faust": "(a) convsync streams, at_least_once (default)",
    "quix": "(b) Quix Streams, RocksDB state, at-least-once (default)",
    "faust-eos": "convsync streams, exactly_once",
    "intake": "faust, no-op handler (intake ceiling)",
    "faust-no-f11": "convsync streams, at_least_once, without F11 (faust's wait_first hand-on)",
    "faust-no-f12": "convsync streams, at_least_once, without F12 (faust's take_events)",
    "faust-no-f13": "convsync streams, at_least_once, without F13 (aiokafka, per record)",
    "faust-no-f14": "convsync streams, at_least_once, without F14 (faust's codecs, monitor)",
    "faust-no-f15": "convsync streams, at_least_once, without F15 (faust's per-record hand-on)",
    "faust-serial": "convsync streams, at_least_once, each batch folded and written in turn",
    "faust-depth1": "convsync streams, at_least_once, one batch folded ahead at most",
    "faust-unstaged": (
        "convsync streams, at_least_once, a batch written once the one before is acked"
    ),
    "faust-thread-acks": (
        "convsync streams, at_least_once, delivery reports served on a thread of their own"
    ),
}
WITHOUT: Final = "--worker-without"


def run_side(name: str, settings: Settings, expected: int, evs: list[Envelope]) -> Run:
    """Run one side on fresh topics. The plain loop and the intake ceiling get the events
    before they start (they create no topics); the workers once they started (settle)."""

    def feed() -> int:
        produce(make_producer(settings), settings.topic("events"), evs)
        return len(evs)

    load = os.getloadavg()[0]
    cpu: float | None = None
    if name == "plain":
        feed()
        rate, cpu = baseline(settings, expected)
    elif name == "intake":
        rate = faust_intake(settings, feed())
    elif name == "quix":
        rate, cpu = through_quix(settings, expected, feed)
    else:
        guarantee = "exactly_once" if name == "faust-eos" else "at_least_once"
        without = {
            "faust-no-f11": "F11",
            "faust-no-f12": "F12",
            "faust-no-f13": "F13",
            "faust-no-f14": "F14",
            "faust-no-f15": "F15",
            "faust-serial": "pipeline",
            "faust-depth1": "deep-pipeline",
            "faust-unstaged": "staged",
            "faust-thread-acks": "loop-acks",
        }.get(name, "")
        rate, cpu = through_faust(settings, expected, feed, guarantee=guarantee, without=without)
    return Run(name, rate, cpu, load)


@dataclass(frozen=True)
class Run:
    side: str
    rate: float  # events/s
    cpu: float | None  # CPU seconds per event of the side's process
    load: float  # 1-minute load average just before the run


def summary(runs: list[Run], sides: list[str]) -> None:
    med: dict[str, float] = {}
    print()
    for name in sides:
        mine = [r for r in runs if r.side == name]
        rates = [r.rate for r in mine]
        med[name] = statistics.median(rates)
        line = (
            f"{LABELS[name]}: median {med[name]:,.0f} events/s "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}, n={len(rates)})"
        )
        cpus = [r.cpu for r in mine if r.cpu is not None]
        if cpus:
            line += f", {statistics.median(cpus) * 1e6:.0f} us CPU/event"
        print(line)
    rounds = [runs[i : i + len(sides)] for i in range(0, len(runs), len(sides))]

    def ratio(a: str, b: str, target: str) -> None:
        if a not in med or b not in med:
            return
        each = ", ".join(
            f"{by[a].rate / by[b].rate:.2f}"
            for by in ({r.side: r for r in rnd} for rnd in rounds)
            if a in by and b in by
        )
        print(f"{a} / {b} = {med[a] / med[b]:.2f} (per round: {each})   {target}")

    print()
    ratio("faust", "quix", "(target >= 1.0)")
    ratio("faust", "plain", "(target >= 0.7)")
    ratio("quix", "plain", "")
    ratio("faust-eos", "plain", "")
    ratio("intake", "plain", "")
    ratio("faust", "faust-no-f11", "(F11 pays if above 1)")
    ratio("faust", "faust-no-f12", "(F12 pays if above 1)")
    ratio("faust", "faust-no-f13", "(F13 pays if above 1)")
    ratio("faust", "faust-no-f14", "(F14 pays if above 1)")
    ratio("faust", "faust-no-f15", "(F15 pays if above 1)")
    ratio("faust", "faust-serial", "(the pipeline pays if above 1)")
    ratio("faust-serial", "quix", "")
    ratio("faust", "faust-depth1", "(depth 4 pays if above 1)")
    ratio("faust", "faust-unstaged", "(overlapping stages pay if above 1)")
    ratio("faust", "faust-thread-acks", "(reports served on the loop pay if above 1)")
    if "plain" in med:
        plain_cpu = statistics.median([r.cpu for r in runs if r.side == "plain" and r.cpu])
        for name in sides:
            cpus = [r.cpu for r in runs if r.side == name and r.cpu]
            if name != "plain" and cpus:
                print(f"CPU efficiency {name} / plain = {plain_cpu / statistics.median(cpus):.2f}")
    loads = [r.load for r in runs]
    print(f"load average (1 min) before the runs: {min(loads):.1f}-{max(loads):.1f}")


def main() -> None:
    if sys.argv[1:2] == [WITHOUT]:
        # (Subprocess mode) `convsync ARGS...` with fixes F<n>,... switched off.
        from cli.main import main as convsync
        from streams import faust_fixes

        faust_fixes.DISABLED.update(sys.argv[2].split(","))
        sys.argv = ["convsync", *sys.argv[3:]]
        convsync()
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--intake-only", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sides",
        default="plain,faust,quix",
        help=f"comma-separated, run in this order each round, of {', '.join(LABELS)}",
    )
    args = parser.parse_args()

    if args.intake_only:
        intake_only(args.intake_only, args.events)
        return

    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(LABELS)
    if unknown:
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")
    base = _stack_settings()
    rng = random.Random(42)
    evs = conversation_events(rng, pages=args.pages, users=args.users, messages=args.events)
    expected = len(fold_all(evs)[1])
    print(f"{len(evs)} events -> {expected} change records, {base.partitions} partitions")
    runs: list[Run] = []
    made: list[tuple[Settings, list[TopicSpec]]] = []
    try:
        for i in range(args.rounds):
            for name in sides:
                settings, specs = fresh(base, ["baseline"])
                made.append((settings, specs))
                run = run_side(name, settings, expected, evs)
                runs.append(run)
                cpu = "" if run.cpu is None else f", {run.cpu * 1e6:.0f} us CPU/event"
                print(
                    f"round {i + 1} {name}: {run.rate:,.0f} events/s{cpu} (load {run.load:.1f})",
                    flush=True,
                )
        summary(runs, sides)
    finally:
        for settings, specs in made:
            admin = admin_client(settings)
            names = [s.name for s in specs]
            topics = admin.list_topics(timeout=10).topics
            # faust's tables (<prefix>.streams-...) and Quix's changelogs (...<prefix>.quix...).
            names += [t for t in topics if settings.topic_prefix in t and t not in names]
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                fut.result(timeout=30)


if __name__ == "__main__":
    main()
