"""Benchmark: events/s through the faust change stream vs a plain confluent-kafka loop.

Both read the same pre-loaded ``<prefix>.events`` and publish the same change records
(the fold of :mod:`streams.change`); the plain loop is the limit of this design: one
process, state in a dict, no changelog. Timing starts at each side's first record and
ends when its last change record is acknowledged (faust: read back from the sink).

    .venv/bin/python -m tests.bench.bench_streams --events 20000

Needs the stack (`convsync up`). Prints both rates and their ratio (target >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

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
from tests.fixtures.stack import _stack_settings
from tests.streams.events import conversation_events, produce
from tests.streams.test_change import fold_all

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


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


def through_faust(
    settings: Settings, expected: int, n_events: int, *, guarantee: str
) -> tuple[float, float]:
    """Run `convsync streams` over the topic; return its events/s (first to last record)
    and the worker's CPU seconds per event over the same span.

    Each run starts over (fresh consumer group via a fresh faust data dir is not enough:
    the group and tables derive from the prefix), so the caller uses a fresh prefix.
    """
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_PARTITIONS": str(settings.partitions),
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }
    reader = Consumer({**settings.kafka_config(), "group.id": "bench-reader"})
    topic = settings.topic("conversations")
    reader.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    with tempfile.TemporaryDirectory() as tmp:
        cli = Path(sys.executable).parent / "convsync"
        args = [str(cli), "streams", "--web-port", str(free_ports()), "--data-dir", tmp]
        args += ["--guarantee", guarantee]
        proc = subprocess.Popen(args, env=env)
        seen = 0
        first = last = 0.0
        cpu_first = cpu_last = 0.0
        try:
            deadline = time.monotonic() + 600
            while seen < expected:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"faust run failed with {seen}/{expected} records")
                msgs = reader.consume(1000, timeout=0.5)
                if msgs:
                    if not first:
                        first, cpu_first = time.perf_counter(), cpu_seconds(proc.pid)
                    last, cpu_last = time.perf_counter(), cpu_seconds(proc.pid)
                    seen += len(msgs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            reader.close()
    return n_events / (last - first), (cpu_last - cpu_first) / n_events


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--intake-only", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()

    if args.intake_only:
        intake_only(args.intake_only, args.events)
        return

    base = _stack_settings()
    rng = random.Random(42)
    evs = conversation_events(rng, pages=args.pages, users=args.users, messages=args.events)
    expected = len(fold_all(evs)[1])
    runs: list[tuple[Settings, list[TopicSpec]]] = []
    try:
        rates: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name in ("plain", "faust", "faust-eos", "intake"):
            settings, specs = fresh(base, ["baseline"])
            runs.append((settings, specs))
            produce(make_producer(settings), settings.topic("events"), evs)
            if name == "plain":
                rates[name], cpu[name] = baseline(settings, expected)
            elif name == "intake":
                rates[name] = faust_intake(settings, len(evs))
            else:
                guarantee = "exactly_once" if name == "faust-eos" else "at_least_once"
                rates[name], cpu[name] = through_faust(
                    settings, expected, len(evs), guarantee=guarantee
                )
            print(f"{name}: {rates[name]:,.0f} events/s", flush=True)
        print(f"{len(evs)} events -> {expected} change records, {base.partitions} partitions")
        plain = rates["plain"]
        print(
            f"plain confluent-kafka loop (fold + produce + commit): {plain:,.0f} events/s, "
            f"{cpu['plain'] * 1e6:.0f} us CPU/event"
        )
        for name, label in (
            ("faust", "faust app, at_least_once (default)"),
            ("faust-eos", "faust app, exactly_once"),
            ("intake", "faust, no-op handler (intake ceiling)"),
        ):
            line = f"{label}: {rates[name]:,.0f} events/s = {rates[name] / plain:.2f} x plain"
            if name in cpu:
                # CPU per event is what a shared machine distorts least: the inverse
                # ratio is the throughput each side would have on a core of its own.
                line += (
                    f"; {cpu[name] * 1e6:.0f} us CPU/event = "
                    f"{cpu['plain'] / cpu[name]:.2f} x plain's CPU efficiency"
                )
            print(line)
        print("target: faust app >= 0.5 x plain")
    finally:
        for settings, specs in runs:
            admin = admin_client(settings)
            names = [s.name for s in specs]
            topics = admin.list_topics(timeout=10).topics
            names += [t for t in topics if t.startswith(app_id(settings))]
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                fut.result(timeout=30)


if __name__ == "__main__":
    main()
