"""The crawler waits out Postgres outages (down at start, restarted mid-crawl) and keeps
no state for pages once their records are handled."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from convsync.db import connect
from convsync.kafka import make_producer
from convsync.settings import Settings
from deploy.postgres_local import LocalPostgres
from deploy.simulator.graph_api import GraphWorld
from producers.crawler._offsets import MAX_MARKS, Mark, PartitionBook
from producers.crawler.request import new_request, read_view, submit
from schemas.migrate import apply_migrations
from schemas.records import TRUNCATED_HEADER, VALUE_COPY_LIMIT, DeadLetter
from tests.fault.harness import read_topic
from tests.fixtures.kafka import MakeTopics
from tests.producers.crawler.conftest import (
    as_rows,
    expected_rows,
    fast_crawler,
    read_events,
    start_worker,
)


def on_private_postgres(make_topics: MakeTopics, pg: LocalPostgres) -> Settings:
    settings = make_topics(partitions=3).model_copy(
        update={"database_url": SecretStr(pg.url), "db_schema": "convsync"}
    )
    with connect(settings) as conn:
        apply_migrations(conn, schema="convsync")
    return settings


def status_of(settings: Settings, crawl_id: str) -> str | None:
    """The crawl's status, None when unknown or Postgres is down."""
    try:
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            view = read_view(conn, settings.db_schema, crawl_id)
    except psycopg.OperationalError:
        return None
    return None if view is None else view.status


def wait_until(what: str, check: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.fault
def test_postgres_down_at_start_then_restarted_mid_crawl(
    make_topics: MakeTopics, private_postgres: LocalPostgres, fake_graph: Any
) -> None:
    settings = on_private_postgres(make_topics, private_postgres)
    world = GraphWorld.generate(seed=31, conversations=60)
    graph = fake_graph(world, conversations_cap=5)
    page = world.page_ids[0]
    private_postgres.stop(mode="immediate")
    # 1. Postgres is down when the worker starts, and when it takes the first record.
    running = start_worker(settings, graph, fast_crawler(calls_per_second=20.0))
    try:
        record = new_request(page, full=True)
        # Straight to the topic: `submit` writes the queued row first, and Postgres is down.
        producer = make_producer(settings)
        producer.produce(settings.topic("crawl"), record.to_bytes(), key=page.encode())
        assert producer.flush(30) == 0
        time.sleep(3)
        assert not running.done.done(), "the worker exited while Postgres was down"
        private_postgres.start()
        wait_until("the crawl to run", lambda: status_of(settings, record.crawl_id) == "running")
        # 2. Postgres restarts (immediate: every connection is cut) while the crawl runs.
        private_postgres.stop(mode="immediate")
        time.sleep(2)
        private_postgres.start()
        wait_until(
            "the crawl to end",
            lambda: status_of(settings, record.crawl_id) in ("done", "failed"),
            timeout=180,
        )
        assert not running.done.done(), "the worker exited"
        want = expected_rows(world, page)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert status_of(settings, record.crawl_id) == "done"
    assert as_rows(events) == want


@pytest.mark.integration
def test_a_page_costs_no_runner_once_its_records_are_handled(
    make_topics: MakeTopics, fake_graph: Any, make_schema: Any
) -> None:
    # Anyone who can write to the crawl topic can name any page: each one used to keep a
    # task and a queue until the partition was revoked.
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=37, conversations=3)
    graph = fake_graph(world)
    running = start_worker(settings, graph)
    try:
        records = [new_request(f"9{i:05d}", full=True) for i in range(40)]
        records.append(new_request(world.page_ids[0], full=True))
        for r in records:
            submit(settings, r)
        wait_until(
            "every crawl to end",
            lambda: all(status_of(settings, r.crawl_id) in ("done", "failed") for r in records),
        )
        worker = running.worker
        assert worker.pages is not None and worker.handler is not None
        pages, handler = worker.pages, worker.handler
        wait_until("the runners to retire", lambda: not pages.runners, timeout=30)
        assert not handler.effects.projected
        assert worker.stats.failed == 40 and worker.stats.done == 1
    finally:
        running.stop()


def test_finished_marks_are_bounded_running_ones_kept() -> None:
    book = PartitionBook()
    book.set_mark("running", Mark("c0", 3, False))
    for i in range(MAX_MARKS * 3):
        book.set_mark(f"p{i}", Mark(f"c{i}", 0, True))
    assert len(book.marks) <= MAX_MARKS
    assert book.marks["running"] == Mark("c0", 3, False)
    # The newest finished marks are the ones kept.
    assert f"p{MAX_MARKS * 3 - 1}" in book.marks and "p0" not in book.marks


@pytest.mark.integration
def test_a_990_kb_poison_crawl_record_is_dead_lettered_and_the_crawl_goes_on(
    make_topics: MakeTopics, fake_graph: Any, make_schema: Any
) -> None:
    # A whole base64 copy of it would be a letter over Kafka's limit: the old worker's
    # page task failed on the refused letter and the worker stopped.
    settings = make_schema(base=make_topics(partitions=1))
    world = GraphWorld.generate(seed=41, conversations=3)
    graph = fake_graph(world)
    page = world.page_ids[0]
    producer = make_producer(settings)
    poison = b"{" + b"z" * 989_999
    producer.produce(settings.topic("crawl"), poison, key=page.encode())
    assert producer.flush(30) == 0
    running = start_worker(settings, graph)
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        wait_until("the crawl to end", lambda: status_of(settings, record.crawl_id) == "done")
        assert not running.done.done()
    finally:
        running.stop()
    [msg] = read_topic(settings, "dlq")
    headers = dict(msg.headers() or [])
    letter = DeadLetter.model_validate_json(msg.value() or b"")
    assert letter.component == "crawler" and letter.offset == 0
    assert headers[TRUNCATED_HEADER] == b"value"
    assert letter.original_value() == poison[:VALUE_COPY_LIMIT]
