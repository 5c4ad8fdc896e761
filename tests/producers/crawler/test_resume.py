"""A failed crawl resumes from its cursor; a conversation that keeps failing is skipped;
a cancelled crawl stops; failed crawls are retried on their own (real Kafka, Postgres,
the fake Graph API)."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.request import cancel, new_request, submit
from producers.crawler.retry import Retrier, RetrySettings, retry_delay
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import (
    as_rows,
    expected_rows,
    fast_crawler,
    read_events,
    start_worker,
)
from tests.producers.crawler.test_worker import wait_status

pytestmark = pytest.mark.integration

# CONVSYNC_TEST_RESUME_PAGE sets another size for the figures in docs/crawler.md.
CONVERSATIONS = int(os.environ.get("CONVSYNC_TEST_RESUME_PAGE", "60"))
CAP = 5  # conversations per Graph page: 12 list calls + 60 message calls = 72 in all


@pytest.fixture
def settings(make_topics: MakeTopics, make_schema: MakeSchema) -> Settings:
    return make_schema(base=make_topics(partitions=3))


def history(settings: Settings, crawl_id: str) -> dict[str, Any]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(
            sql.SQL("SELECT * FROM {}.crawl_history WHERE crawl_id = %s").format(
                sql.Identifier(settings.db_schema)
            ),
            (crawl_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def crawl(settings: Settings, page: str, *, full: bool = True) -> Any:
    record = new_request(page, full=full)
    submit(settings, record)
    return wait_status(settings, record.crawl_id, {"done", "failed", "cancelled"})


def test_a_crawl_failing_at_90_percent_resumes_with_10_percent_more_work(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=11, conversations=CONVERSATIONS, max_messages=3)
    graph = fake_graph(world, conversations_cap=CAP, messages_cap=100)
    page = world.page_ids[0]
    full_run = CONVERSATIONS // CAP + CONVERSATIONS  # one call per list page and thread
    # Meta fails every call after 90 % of the crawl's; the crawler gives up after 2 tries.
    world.faults.fail_after_calls = int(full_run * 0.9)
    running = start_worker(settings, graph, fast_crawler(max_attempts=2))
    try:
        failed = crawl(settings, page)
        assert failed.status == "failed", failed
        before = world.calls[page].calls
        world.faults.fail_after_calls = None
        resumed = crawl(settings, page)
        assert resumed.status == "done", resumed.last_error
        resumed_calls = world.calls[page].calls - before
        want = expected_rows(world, page)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
        # the same crawl again from nothing, for the comparison
        calls_before_full = world.calls[page].calls
        again = crawl(settings, page)
        full_calls = world.calls[page].calls - calls_before_full
    finally:
        running.stop()
    assert again.status == "done"
    print(  # the figures of docs/crawler.md (pytest -s)
        f"conversations={CONVERSATIONS} full run={full_calls} calls,"
        f" failed run={before} calls, resumed run={resumed_calls} calls"
        f" ({resumed_calls / full_calls:.1%} of a full run)"
    )
    assert full_calls == full_run
    # ~10 % of the work, not 100 %: the one step that failed plus what was left
    assert resumed_calls <= full_run * 0.1 + 2, (resumed_calls, full_run)
    assert as_rows(events) == want
    first, second = history(settings, failed.crawl_id), history(settings, resumed.crawl_id)
    assert first["resumed_by"] == resumed.crawl_id and first["resume"] is not None
    assert second["resumed_from"] == failed.crawl_id and second["attempt"] == 2
    # the resumed crawl counts its own calls, and the progress of the whole crawl
    assert second["api_calls"] == resumed_calls
    assert second["conversations_done"] == CONVERSATIONS
    assert running.worker.stats.resumed == 1
    # a crawl after a completed one starts afresh
    assert history(settings, again.crawl_id)["resumed_from"] is None


def test_a_conversation_meta_refuses_is_skipped_and_counted(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=12, conversations=10, max_messages=3)
    page = world.page_ids[0]
    bad = world.conversations[page][4]
    world.faults.failing_threads = {bad.thread_id: "permanent"}
    graph = fake_graph(world, conversations_cap=CAP)
    running = start_worker(settings, graph)
    try:
        view = crawl(settings, page)
        want = {r for r in expected_rows(world, page) if r[1] != bad.psid}
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert view.status == "done", view.last_error
    assert as_rows(events) == want
    row = history(settings, view.crawl_id)
    assert row["skipped_reasons"] == {"conversation_failed": 1}
    assert row["skipped_threads"] == [bad.thread_id]
    assert row["conversations_done"] == 9
    assert running.worker.stats.skipped_conversations == 1


def test_a_conversation_that_keeps_failing_is_skipped_when_the_crawl_resumes(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=13, conversations=10, max_messages=3)
    page = world.page_ids[0]
    bad = world.conversations[page][6]
    world.faults.failing_threads = {bad.thread_id: "transient"}
    graph = fake_graph(world, conversations_cap=CAP)
    running = start_worker(settings, graph, fast_crawler(max_attempts=2, conversation_failures=2))
    try:
        first = crawl(settings, page)
        second = crawl(settings, page)
        third = crawl(settings, page)
        want = {r for r in expected_rows(world, page) if r[1] != bad.psid}
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert (first.status, second.status, third.status) == ("failed", "failed", "done")
    assert history(settings, first.crawl_id)["thread_failures"] == 1
    assert history(settings, second.crawl_id)["thread_failures"] == 2
    row = history(settings, third.crawl_id)
    assert row["skipped_threads"] == [bad.thread_id] and row["attempt"] == 3
    assert row["skipped_reasons"] == {"conversation_failed": 1}
    assert as_rows(events) == want


def test_a_cancelled_crawl_stops_and_the_page_can_be_crawled_again(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=14, conversations=40, max_messages=2)
    page = world.page_ids[0]
    graph = fake_graph(world, conversations_cap=CAP)
    running = start_worker(settings, graph, fast_crawler(calls_per_second=10.0))
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        wait_status(settings, record.crawl_id, {"running"})
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            assert cancel(conn, settings.db_schema, record.crawl_id)
            assert not cancel(conn, settings.db_schema, record.crawl_id)
        deadline = time.monotonic() + 30
        while running.worker.stats.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_at = world.calls[page].calls
        time.sleep(1.0)  # 10 calls/s: a crawl still going would make ~10 more
        assert world.calls[page].calls == stopped_at
        again = crawl(settings, page)
    finally:
        running.stop()
    assert running.worker.stats.cancelled == 1
    assert stopped_at < 40 + 40 // CAP
    assert history(settings, record.crawl_id)["status"] == "cancelled"
    assert again.status == "done"
    # a cancelled crawl's cursor is not resumed: the next crawl starts afresh
    assert history(settings, again.crawl_id)["resumed_from"] is None
    assert history(settings, again.crawl_id)["conversations_done"] == 40


def test_a_failed_crawl_is_retried_on_its_own_within_its_attempts(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=15, conversations=20, max_messages=2)
    page = world.page_ids[0]
    world.faults.fail_after_calls = 10
    graph = fake_graph(world, conversations_cap=CAP)
    running = start_worker(settings, graph, fast_crawler(max_attempts=2))
    retrier = Retrier(settings, RetrySettings(attempts=3, base=0.2, cap=0.2))
    # The same failures seen by a retrier whose delay is 15 to 30 s: not due yet. (A
    # 0.1 s delay may pass while the test is still polling the crawl's status.)
    patient = Retrier(settings, RetrySettings(attempts=3, base=30, cap=30))
    try:
        first = crawl(settings, page)
        assert first.status == "failed"
        assert patient.tick() == []
        time.sleep(0.25)
        (second,) = retrier.tick()
        assert retrier.tick() == []  # asked once, whatever the ticks
        view = wait_status(settings, second.crawl_id, {"done", "failed"})
        assert view.status == "failed"  # still failing: attempt 2
        time.sleep(0.25)
        world.faults.fail_after_calls = None
        (third,) = retrier.tick()
        view = wait_status(settings, third.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
        assert history(settings, third.crawl_id)["attempt"] == 3
        # after the last attempt a failure stays failed: nothing more is asked
        world.faults.fail_after_calls = world.calls[page].calls
        last = crawl(settings, page)
        assert last.status == "failed"
        # a crawl after a done one is attempt 1 again, so it is retried
        time.sleep(0.25)
        assert len(retrier.tick()) == 1
    finally:
        running.stop()


def test_the_retry_delay_doubles_is_capped_and_jittered() -> None:
    delays = [retry_delay("abc", n, base=60, cap=3600) for n in range(1, 10)]
    assert all(60 * 2 ** (n - 1) * 0.5 <= d for n, d in enumerate(delays[:6], 1))
    assert max(delays) <= 3600
    assert delays[0] * 2 == pytest.approx(delays[1])
    # a fixed jitter per crawl, different across crawls
    assert retry_delay("abc", 1, base=60, cap=3600) == delays[0]
    assert len({retry_delay(f"c{i}", 1, base=60, cap=3600) for i in range(20)}) > 10


def test_a_cursor_the_graph_url_no_longer_takes_is_not_resumed(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=16, conversations=20, max_messages=2)
    page = world.page_ids[0]
    world.faults.fail_after_calls = 8  # in the messages of the first listed page
    graph = fake_graph(world, conversations_cap=CAP)
    running = start_worker(settings, graph, fast_crawler(max_attempts=2))
    try:
        failed = crawl(settings, page)
    finally:
        running.stop()
    assert failed.status == "failed"
    # CONVSYNC_GRAPH_URL changed: the failed crawl's cursor names another origin
    world.faults.fail_after_calls = None
    graph.url = graph.url.replace("127.0.0.1", "localhost")
    running = start_worker(settings, graph, fast_crawler())
    try:
        again = crawl(settings, page)
    finally:
        running.stop()
    assert again.status == "done", again.last_error
    row = history(settings, again.crawl_id)
    assert row["resumed_from"] is None and row["attempt"] == 1
    assert row["conversations_done"] == 20
