"""Benchmark: what each component costs as its work grows (CPU seconds, peak RSS).

For each size (default 10,000, 100,000 and 1,000,000), each component runs as its own
process, with default settings, on work of that size in fresh topics (and a fresh schema):

- materializer: ``convsync materialize`` stores N events (new facts of 4 % as many
  conversations, made like the read-path data set's: the simulator's items through the
  gateway's mapping, with retries and crawler copies), until its offsets in Postgres
  cover all N;
- streams: ``convsync streams`` folds the same N events into change records, until its
  consumer group has committed all N;
- crawler: two ``convsync crawler`` processes crawl the simulated Graph API (calls not
  throttled) for N messages (threads of 25 messages over 4 pages), until every crawl is
  done.

Each process is started first and given its partitions, then the work is produced (or
the crawls asked for), so its start-up is left out. Printed per run: the component's CPU
seconds (its processes; for the materializer also the Postgres server's) over the work,
per 100,000 events or messages, the CPU its start-up took, the peak RSS of each process,
and the growth from one size to the next (1.00 = linear). The load average is printed
before each run: the machine is shared, CPU seconds swing far less than rates do.

    .venv/bin/python -m tests.bench.bench_cost [--sizes 10000,100000,1000000] \\
        [--only materializer,streams,crawler]

Needs the stack (``convsync up``).
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from consumers.materializer.config import BatchConfig
from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, make_producer, topic_specs
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.request import new_request, submit
from streams.app import app_id
from tests.bench.bench_crawler import drop, finished, fresh_settings, start_workers
from tests.bench.bench_materializer import Child, drop_schema, fresh_schema, offsets_sum
from tests.bench.bench_streams import worker_env
from tests.bench.procstat import ServerCpu, cpu_seconds, peak_rss_mb
from tests.bench.read_path.gen import FastSender, conversation_events
from tests.bench.read_path.shape import HISTORY_MS, NOW_MS, Shape
from tests.fixtures.kafka import delete_topics_of
from tests.fixtures.stack import _stack_settings
from tests.producers.crawler.conftest import FakeGraph

COMPONENTS = ("materializer", "streams", "crawler")


@dataclass
class Cost:
    """One run: a component on ``n`` events or messages."""

    component: str
    n: int
    cpu: float  # its processes' CPU seconds over the work
    startup: float  # CPU seconds before the first event was done
    rss_mb: list[float]  # peak RSS of each process
    wall: float
    load: float
    server: float | None = None  # the Postgres server's CPU seconds over the work

    def per_100k(self, seconds: float) -> float:
        return seconds / self.n * 100_000


def events(n: int, seed: int = 3, chunk: int = 50_000) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``n`` (key, value) records: conversations of the read-path data set's shape
    (25 events each on average), each chunk's events in time order."""
    shape = Shape(max(1, n // 25_000), max(1, n // 25), n, seed=seed, chunk_events=chunk)
    rng = random.Random(seed)
    sender = FastSender(app_secret="bench-cost", seed=seed)
    made = 0
    for k in range(shape.chunks):
        batch = []
        for page, index, count in shape.chunk(k):
            last = NOW_MS - int(HISTORY_MS * rng.random() ** 2)
            page_id, psid = shape.page_id(page), shape.psid(page, index)
            batch += conversation_events(sender, rng, page_id, psid, count, last)
        batch.sort(key=lambda e: e.occurred_at)
        for ev in batch[: n - made]:
            yield ev.page_id.encode(), ev.to_bytes()
        made += min(len(batch), n - made)
        if made >= n:
            return


def fresh_topics(base: Settings) -> Settings:
    settings = base.model_copy(update={"topic_prefix": f"cost{uuid.uuid4().hex[:8]}"})
    ensure_topics(admin_client(settings), topic_specs(settings))
    return settings


def produce(settings: Settings, n: int) -> int:
    producer = make_producer(settings, **{"linger.ms": 20, "batch.num.messages": 10000})
    topic = settings.topic("events")
    sent = 0
    for key, value in events(n):
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return sent


def wait_assigned(settings: Settings, group: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``group`` owns every partition of the events topic."""
    admin = admin_client(settings)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the component exited"
        assert time.monotonic() < deadline, f"group {group} never took its partitions"
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        owned = sum(
            1
            for m in desc.members
            for tp in m.assignment.topic_partitions
            if tp.topic == settings.topic("events")
        )
        if owned == settings.partitions:
            time.sleep(1.0)  # the fetches and seeks after the assignment
            return
        time.sleep(0.2)


def materializer(base: Settings, n: int) -> Cost:
    settings = fresh_schema(fresh_topics(base), "cost")
    group = f"cost-{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.mkstemp(prefix="bench-cost-", suffix=".log")[1])
    server = ServerCpu(settings)
    child = Child(settings, group, BatchConfig().max_records, log, None)
    try:
        wait_assigned(settings, group, child.proc)
        load = os.getloadavg()[0]
        start, cpu0, srv0 = time.monotonic(), cpu_seconds(child.proc.pid), server.seconds()
        sent = produce(settings, n)
        with connect(settings) as conn:
            while offsets_sum(conn, settings, group) < sent:
                assert child.proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.02)
        wall = time.monotonic() - start
        cpu, srv1 = cpu_seconds(child.proc.pid) - cpu0, server.seconds()
        rss = peak_rss_mb(child.proc.pid)
    finally:
        child.stop()
        drop_schema(settings)
        delete_topics_of(settings)
        log.unlink()
    server_cpu = None if srv0 is None or srv1 is None else srv1 - srv0
    return Cost("materializer", n, cpu, cpu0, [rss], wall, load, server_cpu)


def committed(settings: Settings, group: str) -> int:
    consumer = Consumer({**settings.kafka_config(), "group.id": group})
    try:
        tps = [TopicPartition(settings.topic("events"), p) for p in range(settings.partitions)]
        return sum(max(0, tp.offset) for tp in consumer.committed(tps, timeout=10))
    finally:
        consumer.close()


def streams(base: Settings, n: int) -> Cost:
    settings = fresh_topics(base)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["streams", "--web-port", str(free_ports()), "--data-dir", tmp]
        cmd = [str(Path(sys.executable).parent / "convsync"), *args]
        proc = subprocess.Popen(cmd, env=worker_env(settings))
        try:
            wait_assigned(settings, app_id(settings), proc)  # type: ignore[arg-type]
            load = os.getloadavg()[0]
            start, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
            sent = produce(settings, n)
            while committed(settings, app_id(settings)) < sent:
                assert proc.poll() is None, "the streams worker exited"
                assert time.monotonic() - start < 3600, "streams did not finish in an hour"
                time.sleep(0.2)
            wall = time.monotonic() - start
            cpu = cpu_seconds(proc.pid) - cpu0
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            delete_topics_of(settings)
    return Cost("streams", n, cpu, cpu0, [rss], wall, load)


def crawler(base: Settings, n: int) -> Cost:
    pages, per_thread = 4, 25
    threads = max(1, n // (pages * per_thread))
    world = GraphWorld.generate(
        seed=71, pages=pages, conversations=threads, long_threads=threads,
        long_thread_messages=per_thread, textless_ratio=0.1,
    )  # fmt: skip
    messages = sum(len(world.expected(p)["messages"]) for p in world.page_ids)
    settings = fresh_settings(partitions=12)
    graph = FakeGraph(world, conversations_cap=100, messages_cap=100)
    logs = Path(tempfile.mkdtemp(prefix="bench-cost-crawler-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start_workers(settings, graph, f"cost-{uuid.uuid4().hex[:6]}", 2, 1000.0, logs, procs)
        load = os.getloadavg()[0]
        startup = sum(cpu_seconds(p.pid) for p in procs)
        cpu0, start = startup, time.monotonic()
        submit(settings, *(new_request(p, full=True) for p in world.page_ids))
        while True:
            done, failed = finished(settings)
            if done + failed >= pages:
                break
            assert all(p.poll() is None for p in procs), f"a crawler exited (logs: {logs})"
            time.sleep(0.2)
        assert failed == 0, f"{failed} crawls failed (logs: {logs})"
        wall = time.monotonic() - start
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        rss = [peak_rss_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        graph.stop()
        drop(settings)
    return Cost("crawler", messages, cpu, startup, rss, wall, load)


def report(c: Cost, previous: Cost | None) -> str:
    what = "messages" if c.component == "crawler" else "events"
    growth = ""
    if previous is not None:
        before = previous.per_100k(previous.cpu)
        # A tiny size can measure no CPU at all (the clock ticks in 10 ms): no ratio then.
        ratio = f"{c.per_100k(c.cpu) / before:.2f}" if before > 0 else "n/a (no CPU measured)"
        growth = f"; growth {ratio}"
    server = "" if c.server is None else f" + Postgres {c.per_100k(c.server):.2f} s"
    rss = " / ".join(f"{r:.0f}" for r in c.rss_mb)
    return (
        f"{c.component:12} {c.n:>9,} {what}: {c.per_100k(c.cpu):6.2f} CPU s per 100k{server}"
        f" (start-up {c.startup:.1f} s), peak RSS {rss} MB, wall {c.wall:.1f} s,"
        f" load {c.load:.1f}{growth}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--only", default=",".join(COMPONENTS))
    args = parser.parse_args()
    base = _stack_settings()
    runs = {"materializer": materializer, "streams": streams, "crawler": crawler}
    sizes = [int(s) for s in args.sizes.split(",")]
    for component in args.only.split(","):
        previous = None
        for n in sizes:
            cost = runs[component](base, n)
            print(report(cost, previous), flush=True)
            previous = cost
    print(f"load average {os.getloadavg()[0]:.1f} at the end (2 cores, shared machine)")


if __name__ == "__main__":
    main()
