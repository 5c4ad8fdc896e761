"""Crawler benchmark: (a) messages/s into Kafka vs the bare Graph fetch loop;
(b) wall time under a fake enforcing 2 calls/s per page, 3 pages at once;
(c) steps/s of ONE page of short threads (a serial chain of small steps, as in the
10,000-conversation test) vs the bare loop;
(d) many pages: 200 pages x 50 conversations under the same 2 calls/s per page, crawled
by two ``convsync crawler`` processes (default settings but the rate): wall time against
the rate bound (the busiest page's calls / rate), throttling errors, and the CPU the
workers spent per message (the simulator runs in this process, its CPU printed apart).

Run: ``.venv/bin/python -m tests.bench.bench_crawler`` (needs ``convsync up``);
``--only d --pages 200 --conversations 50 --workers 2`` runs (d) alone.
Numbers are noisy on a shared machine; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import KafkaError, KafkaException
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
from tests.bench.procstat import cpu_seconds, thread_cpu
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.stack import _stack_settings
from tests.producers.crawler.conftest import FakeGraph, start_worker


def fresh_settings(partitions: int = 3) -> Settings:
    base = _stack_settings()
    settings = base.model_copy(
        update={
            "topic_prefix": f"bench{uuid.uuid4().hex[:8]}",
            "partitions": partitions,
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


def start_workers(
    settings: Settings,
    graph: FakeGraph,
    group: str,
    n: int,
    rate: float,
    logs: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Start ``n`` ``convsync crawler`` processes in ``group`` (added to ``procs`` as each
    starts, so the caller stops them whatever happens); return once the group's
    partitions are all assigned."""
    env = {
        **settings_env(settings),
        "CONVSYNC_GRAPH_URL": graph.url,
        "CONVSYNC_PAGE_TOKENS": graph.tokens_json(),
        "CONVSYNC_PARTITIONS": str(settings.partitions),
        "CONVSYNC_CRAWL_GROUP": group,
        "CONVSYNC_CRAWL_CALLS_PER_SECOND": str(rate),
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }
    # With CONVSYNC_BENCH_PROFILE=DIR the workers run under tests.bench.profiled.
    profiled = ["tests.bench.profiled"] if os.environ.get("CONVSYNC_BENCH_PROFILE") else ["cli"]
    for i in range(n):
        out = (logs / f"crawler-{i}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", *profiled, "crawler"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    admin = admin_client(settings)
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, "the crawler group never settled"
        assert all(p.poll() is None for p in procs), "a crawler exited"
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException as e:
            # A fresh broker answers NOT_COORDINATOR until the group's coordinator loaded.
            if not e.args[0].retriable() and e.args[0].code() != KafkaError.NOT_COORDINATOR:
                raise
            time.sleep(0.2)
            continue
        owned = [len(m.assignment.topic_partitions) for m in desc.members]
        if len(owned) == n and sum(owned) == settings.partitions and all(owned):
            return
        time.sleep(0.2)


def finished(settings: Settings) -> tuple[int, int]:
    """Return how many pages' crawls are done and failed."""
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = "
        "'failed') FROM {}.crawl_state"
    ).format(sql.Identifier(settings.db_schema))
    with connect(settings) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def bench_d(pages: int, conversations: int, workers: int) -> dict[str, Any]:
    rate = 2.0
    world = GraphWorld.generate(
        seed=53, pages=pages, conversations=conversations, faults=Faults(rate_per_page=rate)
    )
    settings = fresh_settings(partitions=12)
    graph = FakeGraph(world, conversations_cap=100, messages_cap=100)
    logs = Path(tempfile.mkdtemp(prefix="bench-crawler-"))
    group = f"bench-{uuid.uuid4().hex[:6]}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start_workers(settings, graph, group, workers, rate, logs, procs)
        load = os.getloadavg()[0]
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        threads0 = [thread_cpu(p.pid) for p in procs]
        own0 = time.process_time()
        started = time.monotonic()
        submit(settings, *(new_request(p, full=True) for p in world.page_ids))
        while True:
            done, failed = finished(settings)
            if done + failed >= pages:
                break
            assert all(p.poll() is None for p in procs), f"a crawler exited (logs: {logs})"
            assert time.monotonic() - started < 3600, "the crawl did not finish in an hour"
            time.sleep(0.1)
        wall = time.monotonic() - started
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        threads: dict[str, float] = {}
        for p, before in zip(procs, threads0, strict=True):
            for name, seconds in thread_cpu(p.pid).items():
                threads[name] = threads.get(name, 0.0) + seconds - before.get(name, 0.0)
        own = time.process_time() - own0
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
    assert failed == 0, f"{failed} crawls failed (logs: {logs})"
    calls = [c.served for c in world.calls.values()]
    messages = sum(len(world.expected(p)["messages"]) for p in world.page_ids)
    ideal = max(calls) / rate
    return {
        "pages": pages,
        "workers": workers,
        "calls": sum(calls),
        "max_calls": max(calls),
        "throttled": sum(c.throttled for c in world.calls.values()),
        "messages": messages,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal,
        "cpu_us_per_message": cpu / messages * 1e6,
        "cpu_share": cpu / wall,
        "threads": {k: v / messages * 1e6 for k, v in sorted(threads.items()) if v > 0},
        "simulator_us_per_call": own / sum(calls) * 1e6,
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="abcd", help="which parts to run, e.g. d")
    parser.add_argument("--pages", type=int, default=200, help="(d)")
    parser.add_argument("--conversations", type=int, default=50, help="(d) per page")
    parser.add_argument("--workers", type=int, default=2, help="(d)")
    args = parser.parse_args()
    if "a" in args.only:
        print_a(bench_a())
    if "b" in args.only:
        print_b(bench_b())
    if "c" in args.only:
        print_c(bench_c())
    if "d" in args.only:
        d = bench_d(args.pages, args.conversations, args.workers)
        print(
            f"(d) {d['pages']} pages at 2 calls/s each, {d['workers']} workers: wall "
            f"{d['wall_s']:.1f}s vs the rate bound {d['ideal_s']:.1f}s (busiest page "
            f"{d['max_calls']} calls) -> ratio {d['ratio']:.3f} (target <= 1.1); "
            f"{d['calls']:,} calls, {d['throttled']} throttling errors, {d['messages']:,} "
            f"messages; workers' CPU {d['cpu_us_per_message']:.0f} us/message "
            f"({d['cpu_share']:.2f} cores); simulator {d['simulator_us_per_call']:.0f} us/call; "
            f"load {d['load']:.1f}",
            flush=True,
        )
        each = ", ".join(f"{k} {v:.0f}" for k, v in d["threads"].items())
        print(f"    workers' CPU by thread, us/message: {each}", flush=True)


def print_a(a: dict[str, Any]) -> None:
    print(
        f"(a) unthrottled, {a['messages']} messages, 3 pages at once: "
        f"{a['kafka_msgs_per_s']:,.0f} msg/s into Kafka (acks=all, confirmed) vs "
        f"{a['baseline_msgs_per_s']:,.0f} msg/s bare fetch loop -> ratio {a['ratio']:.2f}",
        flush=True,
    )


def print_b(b: dict[str, Any]) -> None:
    print(
        f"(b) 2 calls/s per page enforced, 3 pages: wall {b['wall_s']:.2f}s vs "
        f"calls/rate {b['calls_over_rate_s']:.2f}s -> ratio {b['ratio']:.3f}; "
        f"calls {b['calls_per_page']}, throttling errors {b['throttled_per_page']}",
        flush=True,
    )


def print_c(c: dict[str, Any]) -> None:
    print(
        f"(c) one page, {c['steps']} small steps ({c['messages']} messages): "
        f"{c['kafka_steps_per_s']:,.0f} steps/s into Kafka ({c['kafka_ms_per_step']:.1f} ms "
        f"per step) vs {c['baseline_steps_per_s']:,.0f} steps/s bare fetch loop",
        flush=True,
    )


if __name__ == "__main__":
    main()
