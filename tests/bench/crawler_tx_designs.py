"""The Kafka side of a crawl step under each bookkeeping design that
``bench_crawler_tx`` measures: today's acks, EOS-v2 (one transactional producer per
worker, steps batched), EOS-v1 (one per crawl partition) and EOS-v1 one step per
partition at a time (see that bench's docstring and docs/crawler.md)."""

from __future__ import annotations

import asyncio
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition

from convsync.aproducer import AsyncProducer
from convsync.kafka import producer_config
from convsync.settings import Settings

PARTITIONS = 3
RECORD = b"x" * 600  # about one message envelope
TX_TIMEOUT_MS = 10_000
RETRY_BACKOFF_MS = int(os.environ.get("BENCH_TX_RETRY_BACKOFF_MS", "5"))


@dataclass
class Step:
    partition: int
    key: bytes
    events: int
    continuation: bytes
    done: asyncio.Future[None] = field(init=False)


class Design:
    """Publishes a step's records and its consumed offset; ``publish`` returns once durable."""

    name = ""
    # One step (Graph call and publish) per partition at a time.
    serial = False

    async def start(self) -> None:
        """Set up the producers."""

    async def publish(self, step: Step) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Tear down."""


class Acks(Design):
    """Today's worker: events acked, then the continuation acked, commit not awaited."""

    name = "acks"

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = AsyncProducer(Producer(producer_config(settings, **{"linger.ms": 1})))
        self.offsets = [0] * PARTITIONS

    async def start(self) -> None:
        self.producer.start()

    async def publish(self, step: Step) -> None:
        events = self.settings.topic("events")
        await self.producer.send_batch(events, ((step.key, RECORD) for _ in range(step.events)))
        await self.producer.send_batch(
            self.settings.topic("crawl"), [(step.key, step.continuation)]
        )
        self.offsets[step.partition] += 1
        tp = TopicPartition(
            self.settings.topic("crawl"), step.partition, self.offsets[step.partition]
        )
        self.consumer.commit(offsets=[tp], asynchronous=True)

    async def close(self) -> None:
        await self.producer.close(5)


class Batcher:
    """One transactional producer: steps that finish while it commits go in the next."""

    def __init__(self, settings: Settings, consumer: Consumer, txid: str) -> None:
        self.settings = settings
        self.consumer = consumer
        conf = producer_config(
            settings,
            **{
                "linger.ms": 1,
                "transactional.id": txid,
                "transaction.timeout.ms": TX_TIMEOUT_MS,
                # A transaction begun while the broker still writes the last one's
                # markers is refused (CONCURRENT_TRANSACTIONS) and retried after this
                # (100 ms by default), which would dominate back-to-back transactions.
                "retry.backoff.ms": RETRY_BACKOFF_MS,
            },
        )
        self.producer = Producer(conf)
        self.thread = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Step] = []
        self.wake = asyncio.Event()
        self.offsets: dict[int, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.batch_sizes: list[int] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.thread, self.producer.init_transactions, 30)
        self.task = asyncio.create_task(self._run())

    async def publish(self, step: Step) -> None:
        step.done = asyncio.get_running_loop().create_future()
        self.pending.append(step)
        self.wake.set()
        await step.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            for s in batch:
                self.offsets[s.partition] = self.offsets.get(s.partition, 0) + 1
            offsets = dict(self.offsets)
            await loop.run_in_executor(self.thread, self._commit, batch, offsets)
            self.transactions += 1
            self.batch_sizes.append(len(batch))
            for s in batch:
                s.done.set_result(None)

    def _commit(self, batch: list[Step], offsets: dict[int, int]) -> None:
        p = self.producer
        events, crawl = self.settings.topic("events"), self.settings.topic("crawl")
        p.begin_transaction()
        for s in batch:
            for _ in range(s.events):
                self._produce(events, s.key, RECORD)
            self._produce(crawl, s.key, s.continuation)
        positions = [TopicPartition(crawl, part, o) for part, o in offsets.items()]
        p.send_offsets_to_transaction(positions, self.consumer.consumer_group_metadata(), 30)
        p.commit_transaction(30)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key=key)
                return
            except BufferError:
                self.producer.poll(0.005)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.thread.shutdown(wait=True)


class EosV2(Design):
    name = "eos-v2"

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        self.batcher = Batcher(settings, consumer, f"crawler-{uuid.uuid4().hex[:8]}")

    async def start(self) -> None:
        await self.batcher.start()

    async def publish(self, step: Step) -> None:
        await self.batcher.publish(step)

    async def close(self) -> None:
        await self.batcher.close()

    def batches(self) -> list[Batcher]:
        return [self.batcher]


class EosV1(Design):
    name = "eos-v1"

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        group = f"crawler-{uuid.uuid4().hex[:8]}"
        self.by_partition = [Batcher(settings, consumer, f"{group}-{p}") for p in range(PARTITIONS)]

    async def start(self) -> None:
        await asyncio.gather(*(b.start() for b in self.by_partition))

    async def publish(self, step: Step) -> None:
        await self.by_partition[step.partition].publish(step)

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.by_partition))

    def batches(self) -> list[Batcher]:
        return self.by_partition


class Serial(EosV1):
    name = "serial"
    serial = True
