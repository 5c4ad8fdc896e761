"""Fixtures of the crawler tests: a fake Graph API in a thread, a worker, an events reader."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphApiServer, GraphWorld, token_for
from producers.crawler.config import CrawlerSettings
from producers.crawler.state import CrawlStateStore, make_pool
from producers.crawler.worker import CrawlWorker
from schemas.envelope import Envelope


@pytest_asyncio.fixture
async def store(settings: Settings) -> AsyncIterator[CrawlStateStore]:
    """The crawl state store on a pool of two connections to the module's schema."""
    pool = make_pool(settings.database_url.get_secret_value(), size=2)
    await pool.open()
    try:
        yield CrawlStateStore(pool, settings.db_schema)
    finally:
        await pool.close()


class FakeGraph:
    """A :class:`GraphApiServer` served from its own thread and event loop."""

    def __init__(self, world: GraphWorld, **kwargs: Any) -> None:
        self.world = world
        self.loop = asyncio.new_event_loop()
        self.server = GraphApiServer(world, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = self.call(self.server.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def tokens(self) -> dict[str, SecretStr]:
        return {p: SecretStr(token_for(p)) for p in self.world.page_ids}

    def tokens_json(self) -> str:
        import json

        return json.dumps({p: token_for(p) for p in self.world.page_ids})

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fake_graph() -> Iterator[Callable[..., FakeGraph]]:
    """Factory: ``fake_graph(world, conversations_cap=25, ...)`` -> a running FakeGraph."""
    made: list[FakeGraph] = []

    def factory(world: GraphWorld, **kwargs: Any) -> FakeGraph:
        fake = FakeGraph(world, **kwargs)
        made.append(fake)
        return fake

    yield factory
    for fake in made:
        fake.stop()


@dataclass
class RunningWorker:
    """A CrawlWorker running in a thread of its own."""

    worker: CrawlWorker
    stop_event: asyncio.Event
    loop: asyncio.AbstractEventLoop
    done: Future[None]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.done.result(60)


def start_worker(
    settings: Settings, graph: FakeGraph, crawler: CrawlerSettings | None = None
) -> RunningWorker:
    """Start a worker on ``settings`` against ``graph``; it runs until ``stop()``."""
    crawler = crawler or fast_crawler()
    worker = CrawlWorker(settings, crawler, graph_url=graph.url, page_tokens=graph.tokens())
    loop = asyncio.new_event_loop()
    done: Future[None] = Future()
    holder: dict[str, asyncio.Event] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            holder["stop"] = asyncio.Event()
            ready.set()
            await worker.run(holder["stop"])

        try:
            loop.run_until_complete(main())
            done.set_result(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test through the future
            done.set_exception(e)
        finally:
            loop.close()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return RunningWorker(worker, holder["stop"], loop, done)


def fast_crawler(**overrides: Any) -> CrawlerSettings:
    """Crawler settings for tests: no pacing to speak of, quick backoffs."""
    values: dict[str, Any] = {
        "calls_per_second": 1000.0,
        "backoff_base": 0.01,
        "backoff_max": 0.1,
        "group": f"crawler-{time.monotonic_ns()}",
    }
    values.update(overrides)
    return CrawlerSettings(**values)


def read_events(
    settings: Settings, *, until: Callable[[list[Envelope]], bool], timeout: float = 60.0
) -> list[Envelope]:
    """Read ``<prefix>.events`` from the start until ``until(envelopes)`` or timeout."""
    topic = settings.topic("events")
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    md = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    out: list[Envelope] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    out.append(Envelope.from_bytes(msg.value()))
            if until(out):
                break
    finally:
        consumer.close()
    return out


def as_rows(envelopes: list[Envelope]) -> set[tuple[str, str, str | None, str | None, str | None]]:
    """Return the comparable (page, psid, mid, text, direction) set of envelopes."""
    return {(e.page_id, e.psid, e.mid, e.text, e.direction) for e in envelopes}


def expected_rows(world: GraphWorld, page_id: str) -> set[tuple[Any, ...]]:
    """Return the fake's truth for ``page_id`` in the same shape."""
    return {tuple(r) for r in world.expected(page_id)["messages"]}


BIG_PAGE = int(os.environ.get("CONVSYNC_TEST_BIG_PAGE", "10000"))
"""Conversations of the issue's big page (``CONVSYNC_TEST_BIG_PAGE`` sets another size; keep
it above ~800 so the crawl reaches the throttling fault the backfill test expects)."""


def big_world(seed: int, conversations: int = BIG_PAGE) -> GraphWorld:
    """The issue's big page: long threads, no-user conversations, malformed and
    text-less messages, and every Graph fault (5xx, broken JSON, throttling, details limit)."""
    return GraphWorld.generate(
        seed=seed,
        conversations=conversations,
        max_messages=3,
        long_threads=20,
        long_thread_messages=30,
        no_user=15,
        malformed=10,
        textless_ratio=0.1,
        faults=Faults(
            details_limit=20,
            error_5xx_every=499,
            broken_json_every=701,
            throttle_every=797,
            regain_minutes=0.1 / 60,
        ),
    )
