"""The Kafka side of a crawl step with and without Kafka transactions, on the real broker
(the designs are in ``crawler_tx_designs.py``).

* ``acks``: today's worker. A step's events are produced and acknowledged, then its
  continuation; the crawl offset is committed asynchronously (marks as metadata), and
  nothing waits for that commit (see docs/crawler.md, *The log is the cursor*). The
  step goes through the worker's own ``AsyncProducer``.
* ``eos-v2``: Kafka transactions with ONE transactional producer per worker. A producer
  has one open transaction at a time, so the steps that finish while a transaction
  commits wait and go together into the next one (events + continuations +
  ``send_offsets_to_transaction`` of the crawl partitions).
* ``eos-v1``: one transactional producer per crawl partition (``transactional.id`` =
  group + partition, as Kafka Streams' first exactly-once mode), each batching the steps
  of its partition's pages the same way.
* ``serial``: ``eos-v1`` with one step per partition at a time (Graph call included),
  the one design in which the committed offset is exact and no page marks are needed.

The Graph call is left out (it is the same in every design) or stood for by a pause.
Workloads: one page of small serial steps (the latency of a page's chain), 3 pages of
100 records per step (the crawler bench's (a)), 200 pages at once unthrottled, 200
pages paced at 2 calls/s each (the rate Meta publishes), and 60 pages paced so, whose
Graph calls take 300 ms each (the fake answers in about a millisecond; Meta does not).
While more than 3 pages run, a "webhook" producer writes a record to the events topic
every 20 ms and a read_committed reader times when it becomes readable: an open
transaction holds back every record behind it on its partitions.

Then what a SIGKILL in the middle of a transaction costs: a child process opens a
transaction (one event on ``events[0]`` and the crawl offset of its group) and is killed;
a webhook record produced right after it on the same partition becomes readable to a
read_committed reader (the materializer) only once that transaction is aborted, and the
next owner's committed-offset fetch waits for it too. With EOS-v2 (a transactional id per
process) nobody aborts it until ``transaction.timeout.ms`` (plus the broker's cleanup
interval); with EOS-v1 the next owner's ``init_transactions`` with the same id aborts it.

Run: ``.venv/bin/python -m tests.bench.bench_crawler_tx`` (needs ``convsync up``).
Numbers are noisy on a shared machine; compare the designs within one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from convsync.kafka import admin_client, ensure_topics, make_consumer, producer_config, topic_specs
from convsync.settings import Settings
from tests.bench.crawler_tx_designs import (
    PARTITIONS,
    TX_TIMEOUT_MS,
    Acks,
    Batcher,
    Design,
    EosV1,
    EosV2,
    Serial,
    Step,
)
from tests.fixtures.stack import _stack_settings


def fresh_settings() -> Settings:
    settings = _stack_settings().model_copy(
        update={"topic_prefix": f"benchtx{uuid.uuid4().hex[:8]}", "partitions": PARTITIONS}
    )
    ensure_topics(admin_client(settings), topic_specs(settings))
    return settings


def drop(settings: Settings) -> None:
    admin = admin_client(settings)
    for fut in admin.delete_topics([s.name for s in topic_specs(settings)]).values():
        fut.result(30)


def member(settings: Settings, group: str) -> Consumer:
    """Return a consumer of the crawl topic that has joined ``group`` (all partitions)."""
    consumer = make_consumer(settings, group)
    assigned = threading.Event()
    consumer.subscribe([settings.topic("crawl")], on_assign=lambda _c, _p: assigned.set())
    deadline = time.monotonic() + 30
    while not assigned.is_set():
        assert time.monotonic() < deadline, "no assignment"
        consumer.poll(0.1)
    return consumer


class WebhookProbe:
    """Writes a record to ``events`` every ``every`` s (no transaction, like the gateway)
    and times when a read_committed reader gets it."""

    def __init__(self, settings: Settings, every: float = 0.02) -> None:
        self.settings = settings
        self.every = every
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent: dict[bytes, float] = {}

    def start(self) -> None:
        topic = self.settings.topic("events")
        reader = Consumer(
            {
                **self.settings.kafka_config(),
                "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        reader.assign([TopicPartition(topic, p, -1) for p in range(PARTITIONS)])
        producer = Producer(producer_config(self.settings, **{"linger.ms": 0}))

        def read() -> None:
            while not self._stop.is_set():
                for msg in reader.consume(1000, 0.05):
                    sent = self._sent.pop(msg.value() or b"", None)
                    if sent is not None:
                        self.latencies.append(time.monotonic() - sent)
            reader.close()

        def write() -> None:
            time.sleep(1.0)  # the reader's first fetch sets its position
            i = 0
            while not self._stop.is_set():
                value = b"probe-%d" % i
                self._sent[value] = time.monotonic()
                producer.produce(topic, value, partition=i % PARTITIONS)
                producer.poll(0)
                i += 1
                time.sleep(self.every)
            producer.flush(5)

        self._threads = [threading.Thread(target=read), threading.Thread(target=write)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        time.sleep(0.5)
        self._stop.set()
        for t in self._threads:
            t.join(10)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Result:
    design: str
    workload: str
    steps: int
    records: int
    seconds: float
    step_ms: list[float]
    webhook_ms: list[float]
    batch: float

    def line(self) -> str:
        out = (
            f"{self.workload:<22} {self.design:<7} {self.steps / self.seconds:8,.0f} steps/s "
            f"{self.records / self.seconds:8,.0f} records/s  step p50 "
            f"{pct(self.step_ms, 0.5):6.1f} ms p99 {pct(self.step_ms, 0.99):6.1f} ms"
        )
        if self.batch:
            out += f"  steps per transaction {self.batch:5.1f}"
        if self.webhook_ms:
            out += (
                f"  webhook visible p50 {pct(self.webhook_ms, 0.5):5.1f} ms"
                f" p99 {pct(self.webhook_ms, 0.99):6.1f} ms"
            )
        return out


async def run_workload(
    design: Design,
    *,
    pages: int,
    steps: int,
    records: int,
    graph: Callable[[int], Awaitable[None]],
) -> tuple[float, list[float]]:
    """Run ``pages`` page chains of ``steps`` steps; return (wall s, per-step ms)."""
    latencies: list[float] = []
    continuation = b"c" * 1200
    locks = [asyncio.Lock() for _ in range(PARTITIONS)]

    async def step(i: int, key: bytes) -> None:
        await graph(i)
        t = time.monotonic()
        await design.publish(Step(i % PARTITIONS, key, records, continuation))
        latencies.append(1000 * (time.monotonic() - t))

    async def page(i: int) -> None:
        key = f"1043{i:05d}".encode()
        for _ in range(steps):
            if design.serial:
                async with locks[i % PARTITIONS]:
                    await step(i, key)
            else:
                await step(i, key)

    # Not timed: each producer's first records wait for the topics' metadata.
    for p in range(PARTITIONS):
        await design.publish(Step(p, b"warm-up", 1, continuation))
    started = time.monotonic()
    await asyncio.gather(*(page(i) for i in range(pages)))
    return time.monotonic() - started, latencies


async def no_graph(_page: int) -> None:
    await asyncio.sleep(0)


def paced(rate: float, latency: float = 0.0) -> Callable[[int], Awaitable[None]]:
    """A page's calls spaced at ``rate`` per second, as the crawler's pacer does, each
    taking ``latency`` seconds to answer."""
    last: dict[int, float] = {}

    async def wait(page: int) -> None:
        now = time.monotonic()
        at = last.get(page, now - 1 / rate) + 1 / rate
        last[page] = max(at, now)
        await asyncio.sleep(max(0.0, at - now) + latency)

    return wait


ALL: list[Callable[[Settings, Consumer], Design]] = [Acks, EosV2, EosV1]
WORKLOADS: list[tuple[str, dict[str, Any], list[Callable[[Settings, Consumer], Design]]]] = [
    ("1 page x 300 small", {"pages": 1, "steps": 300, "records": 3, "graph": None}, ALL),
    ("3 pages x 90 of 100", {"pages": 3, "steps": 90, "records": 100, "graph": None}, ALL),
    ("200 pages x 10 of 25", {"pages": 200, "steps": 10, "records": 25, "graph": None}, ALL),
    ("200 pages 2 calls/s", {"pages": 200, "steps": 20, "records": 25, "graph": 2.0}, ALL),
    (
        "60 pages 2/s, 300 ms",
        {"pages": 60, "steps": 4, "records": 25, "graph": 2.0, "latency": 0.3},
        [*ALL, Serial],
    ),
]


def measure(
    settings: Settings,
    make: Callable[[Settings, Consumer], Design],
    workload: str,
    spec: dict[str, Any],
    *,
    probe: bool,
) -> Result:
    consumer = member(settings, f"benchtx-{uuid.uuid4().hex[:6]}")
    design = make(settings, consumer)
    webhook = WebhookProbe(settings) if probe else None

    async def main() -> tuple[float, list[float]]:
        await design.start()
        graph = (
            no_graph if spec["graph"] is None else paced(spec["graph"], spec.get("latency", 0.0))
        )
        try:
            return await run_workload(
                design,
                pages=spec["pages"],
                steps=spec["steps"],
                records=spec["records"],
                graph=graph,
            )
        finally:
            await design.close()

    if webhook is not None:
        webhook.start()
        time.sleep(1.5)  # the probe is writing and read before the workload starts
    try:
        seconds, latencies = asyncio.run(main())
    finally:
        if webhook is not None:
            webhook.stop()
        consumer.close()
    batches: list[Batcher] = design.batches() if isinstance(design, EosV1 | EosV2) else []
    sizes = [n for b in batches for n in b.batch_sizes]
    steps = spec["pages"] * spec["steps"]
    return Result(
        design.name,
        workload,
        steps,
        steps * (spec["records"] + 1),
        seconds,
        latencies,
        [1000 * s for s in (webhook.latencies if webhook else [])],
        statistics.mean(sizes) if sizes else 0.0,
    )


CHILD = """
import json, os, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
events, crawl, group, txid = sys.argv[1:5]
kafka = json.loads(os.environ["BENCH_KAFKA_CONFIG"])
p = Producer({**kafka, "transactional.id": txid, "transaction.timeout.ms": TIMEOUT})
p.init_transactions(30)
c = Consumer({**kafka, "group.id": group})
p.begin_transaction()
p.produce(events, b"step-event", partition=0)
p.flush(10)
p.send_offsets_to_transaction([TopicPartition(crawl, 0, 1)], c.consumer_group_metadata(), 30)
print("open", flush=True)
time.sleep(600)
""".replace("TIMEOUT", str(TX_TIMEOUT_MS))


def kill_cost(settings: Settings, design: str) -> dict[str, float]:
    """SIGKILL a process holding an open transaction; return the seconds until a webhook
    record produced after it is readable (read_committed) and until the group's
    committed offset of the crawl partition can be read."""
    events, crawl = settings.topic("events"), settings.topic("crawl")
    group = f"benchtx-kill-{uuid.uuid4().hex[:6]}"
    txid = f"{group}-0"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, events, crawl, group, txid],
        stdout=subprocess.PIPE,
        # in the environment: the config may hold a SASL password
        env={**os.environ, "BENCH_KAFKA_CONFIG": json.dumps(settings.kafka_config())},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"open"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    killed = time.monotonic()
    if design == "eos-v1":
        # The next owner of partition 0 initialises the same transactional id.
        heir = Producer(producer_config(settings, **{"transactional.id": txid}))
        heir.init_transactions(60)
    webhook = Producer(producer_config(settings, **{"linger.ms": 0}))
    marker = f"webhook-{uuid.uuid4().hex}".encode()
    webhook.produce(events, marker, partition=0)
    webhook.flush(10)
    reader = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(events, 0, 0)])
    visible = None
    while visible is None and time.monotonic() - killed < 120:
        for msg in reader.consume(100, 0.05):
            if msg.error() is None and msg.value() == marker:
                visible = time.monotonic() - killed
    reader.close()
    heir_consumer = Consumer(
        {**settings.kafka_config(), "group.id": group, "isolation.level": "read_committed"}
    )
    t = time.monotonic()
    heir_consumer.committed([TopicPartition(crawl, 0)], timeout=120)
    offsets_after = time.monotonic() - killed
    offsets_wait = time.monotonic() - t
    heir_consumer.close()
    return {
        "webhook_visible_s": float("nan") if visible is None else visible,
        "offsets_readable_s": offsets_after,
        "offsets_fetch_blocked_s": offsets_wait,
    }


def main() -> None:
    settings = fresh_settings()
    try:
        for workload, spec, designs in WORKLOADS:
            for make in designs:
                result = measure(settings, make, workload, spec, probe=spec["pages"] > 3)
                print(result.line(), flush=True)
        for design in ("eos-v2", "eos-v1"):
            cost = kill_cost(settings, design)
            print(
                f"SIGKILL in a transaction, {design} (transaction.timeout.ms {TX_TIMEOUT_MS}):"
                f" a webhook record after it readable in {cost['webhook_visible_s']:.2f} s,"
                f" the crawl offset readable in {cost['offsets_readable_s']:.2f} s",
                flush=True,
            )
    finally:
        drop(settings)


if __name__ == "__main__":
    main()
