"""Crawler benchmark: (a) messages/s into Kafka vs the bare Graph fetch loop;
(b) wall time under a fake enforcing 2 calls/s per page, 3 pages at once;
(c) steps/s of ONE page of short threads (a serial chain of small steps, as in the
10,000-conversation test) vs the bare loop.

Run: ``.venv/bin/python -m tests.bench.bench_crawler`` (needs ``convsync up``).
Numbers are noisy on a shared machine; the ratios are measured in the same run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
from psycopg import sql

from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphApiServer, GraphWorld, token_for
from producers.crawler.config import CrawlerSettings
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import GraphClient
from producers.crawler.request import new_request, read_view, submit
from producers.crawler.step import run_step
from schemas.migrate import apply_migrations
from tests.fixtures.stack import _stack_settings
from tests.producers.crawler.conftest import FakeGraph, start_worker


def fresh_settings() -> Settings:
    base = _stack_settings()
    settings = base.model_copy(
        update={
            "topic_prefix": f"bench{uuid.uuid4().hex[:8]}",
            "partitions": 3,
            "db_schema": f"bench_{uuid.uuid4().hex[:8]}",
        }
    )
    ensure_topics(admin_client(settings), topic_specs(settings))
    with connect(settings) as conn:
        apply_migrations(conn, schema=settings.db_schema)
    return settings


def drop(settings: Settings) -> None:
    admin = admin_client(settings)
    for fut in admin.delete_topics([s.name for s in topic_specs(settings)]).values():
        fut.result(30)
    with connect(settings) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(settings.db_schema)))


def crawl_pages(settings: Settings, graph: FakeGraph, crawler: CrawlerSettings) -> float:
    """Crawl every page of the fake at once through the worker; return the wall seconds."""
    running = start_worker(settings, graph, crawler)
    deadline = time.monotonic() + 60
    while running.worker.assigned_partitions < settings.partitions:
        assert time.monotonic() < deadline, "worker got no partitions"
        time.sleep(0.05)
    try:
        records = [new_request(p, full=True) for p in graph.world.page_ids]
        started = time.monotonic()
        submit(settings, *records)
        with connect(settings) as conn:
            for r in records:
                while True:
                    view = read_view(conn, settings.db_schema, r.crawl_id)
                    if view is not None and view.finished:
                        assert view.status == "done", view.last_error
                        break
                    time.sleep(0.02)
        return time.monotonic() - started
    finally:
        running.stop()


async def fetch_loop(world: GraphWorld, crawler: CrawlerSettings) -> tuple[float, int]:
    """The baseline: the same steps (Graph fetch + parse to envelopes), no Kafka."""
    server = GraphApiServer(world, conversations_cap=100, messages_cap=100)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = GraphClient(session, server.base_url)

            async def one(page: str) -> int:
                fetch = PageFetcher(client, page_id=page, token=token_for(page), settings=crawler)
                record = new_request(page, full=True)
                n = 0
                while True:
                    out = await run_step(
                        record,
                        fetch=fetch,
                        origin=client.origin,
                        conversations_limit=crawler.conversations_limit,
                        messages_limit=crawler.messages_limit,
                    )
                    n += len([e.to_bytes() for e in out.envelopes])
                    record = record.model_copy(update={"seq": record.seq + 1, "step": out.step})
                    if out.done:
                        return n

            started = time.monotonic()
            counts = await asyncio.gather(*(one(p) for p in world.page_ids))
            return time.monotonic() - started, sum(counts)
    finally:
        await server.stop()


def bench_a() -> dict[str, Any]:
    crawler = CrawlerSettings(
        calls_per_second=10_000,
        conversations_limit=100,
        messages_limit=100,
        group=f"bench-{uuid.uuid4().hex[:6]}",
    )
    spec: dict[str, Any] = {
        "seed": 41,
        "pages": 3,
        "conversations": 30,
        "long_threads": 30,
        "long_thread_messages": 300,
    }
    base_s, base_n = asyncio.run(fetch_loop(GraphWorld.generate(**spec), crawler))
    world = GraphWorld.generate(**spec)
    settings = fresh_settings()
    graph = FakeGraph(world, conversations_cap=100, messages_cap=100)
    try:
        kafka_s = crawl_pages(settings, graph, crawler)
    finally:
        graph.stop()
        drop(settings)
    n = sum(len(world.expected(p)["messages"]) for p in world.page_ids)
    assert n == base_n
    return {
        "messages": n,
        "baseline_msgs_per_s": base_n / base_s,
        "kafka_msgs_per_s": n / kafka_s,
        "ratio": (n / kafka_s) / (base_n / base_s),
    }


def bench_b() -> dict[str, Any]:
    rate = 2.0
    crawler = CrawlerSettings(
        calls_per_second=rate,
        conversations_limit=25,
        messages_limit=25,
        group=f"bench-{uuid.uuid4().hex[:6]}",
    )
    world = GraphWorld.generate(
        seed=43,
        pages=3,
        conversations=19,
        max_messages=20,
        faults=Faults(rate_per_page=rate),
    )
    settings = fresh_settings()
    graph = FakeGraph(world, conversations_cap=25, messages_cap=25)
    try:
        wall = crawl_pages(settings, graph, crawler)
    finally:
        graph.stop()
        drop(settings)
    calls = {p: c.served for p, c in world.calls.items()}
    throttled = {p: c.throttled for p, c in world.calls.items()}
    ideal = max(calls.values()) / rate
    return {
        "calls_per_page": calls,
        "throttled_per_page": throttled,
        "wall_s": wall,
        "calls_over_rate_s": ideal,
        "ratio": wall / ideal,
    }


def bench_c() -> dict[str, Any]:
    crawler = CrawlerSettings(
        calls_per_second=10_000,
        conversations_limit=100,
        messages_limit=25,
        group=f"bench-{uuid.uuid4().hex[:6]}",
    )
    spec: dict[str, Any] = {"seed": 47, "pages": 1, "conversations": 600, "max_messages": 3}
    base_s, base_n = asyncio.run(fetch_loop(GraphWorld.generate(**spec), crawler))
    world = GraphWorld.generate(**spec)
    settings = fresh_settings()
    graph = FakeGraph(world, conversations_cap=100, messages_cap=25)
    try:
        kafka_s = crawl_pages(settings, graph, crawler)
    finally:
        graph.stop()
        drop(settings)
    steps = sum(c.served for c in world.calls.values())
    return {
        "steps": steps,
        "messages": base_n,
        "kafka_steps_per_s": steps / kafka_s,
        "baseline_steps_per_s": steps / base_s,
        "kafka_ms_per_step": 1000 * kafka_s / steps,
    }


def main() -> None:
    a = bench_a()
    print(
        f"(a) unthrottled, {a['messages']} messages, 3 pages at once: "
        f"{a['kafka_msgs_per_s']:,.0f} msg/s into Kafka (acks=all, confirmed) vs "
        f"{a['baseline_msgs_per_s']:,.0f} msg/s bare fetch loop -> ratio {a['ratio']:.2f}"
    )
    b = bench_b()
    print(
        f"(b) 2 calls/s per page enforced, 3 pages: wall {b['wall_s']:.2f}s vs "
        f"calls/rate {b['calls_over_rate_s']:.2f}s -> ratio {b['ratio']:.3f}; "
        f"calls {b['calls_per_page']}, throttling errors {b['throttled_per_page']}"
    )
    c = bench_c()
    print(
        f"(c) one page, {c['steps']} small steps ({c['messages']} messages): "
        f"{c['kafka_steps_per_s']:,.0f} steps/s into Kafka ({c['kafka_ms_per_step']:.1f} ms "
        f"per step) vs {c['baseline_steps_per_s']:,.0f} steps/s bare fetch loop"
    )


if __name__ == "__main__":
    main()
