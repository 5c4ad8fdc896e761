"""The crawler worker through real Kafka and Postgres against the fake Graph API."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphWorld
from producers.crawler._offsets import Mark, PartitionBook
from producers.crawler.request import new_request, read_view, submit
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import (
    as_rows,
    expected_rows,
    fast_crawler,
    read_events,
    start_worker,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(make_topics: MakeTopics, make_schema: MakeSchema) -> Settings:
    return make_schema(base=make_topics(partitions=3))


def wait_status(
    settings: Settings, crawl_id: str, statuses: set[str], timeout: float = 60.0
) -> Any:
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            view = read_view(conn, settings.db_schema, crawl_id)
            if view is not None and view.status in statuses:
                return view
            time.sleep(0.1)
    raise AssertionError(f"crawl {crawl_id} never reached {statuses}")


def crawl_state(settings: Settings, page_id: str) -> dict[str, Any]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        cur = conn.execute(
            sql.SQL("SELECT * FROM {}.crawl_state WHERE page_id = %s").format(
                sql.Identifier(settings.db_schema)
            ),
            (page_id,),
        )
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([d.name for d in cur.description], row, strict=True))


def test_backfill_equals_the_fake(settings: Settings, fake_graph: Any) -> None:
    world = GraphWorld.generate(
        seed=7,
        conversations=30,
        long_threads=2,
        no_user=2,
        malformed=2,
        faults=Faults(details_limit=20, error_5xx_every=9, broken_json_every=13),
    )
    graph = fake_graph(world, conversations_cap=10, messages_cap=15)
    page = world.page_ids[0]
    running = start_worker(settings, graph)
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
        want = expected_rows(world, page)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert as_rows(events) == want
    assert {e.source for e in events} == {"crawler"}
    assert all(e.thread_id and e.thread_id.startswith("t_") for e in events)
    state = crawl_state(settings, page)
    truth = world.expected(page)
    assert state["status"] == "done"
    assert state["messages_fetched"] == len(want)
    assert state["skipped_reasons"] == truth["skipped"]
    assert state["conversations_fetched"] == truth["conversations"]
    assert state["retries"] > 0
    assert state["messages_no_details"] == sum(1 for r in want if r[4] is None)


def test_permanent_error_fails_the_crawl_with_its_reason(
    settings: Settings, fake_graph: Any
) -> None:
    world = GraphWorld.generate(seed=3, conversations=5, faults=Faults(permanent_code=100))
    graph = fake_graph(world)
    running = start_worker(settings, graph)
    try:
        record = new_request(world.page_ids[0], full=True)
        submit(settings, record)
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
    finally:
        running.stop()
    assert view.status == "failed"
    assert "code 100" in (view.last_error or "")
    # no retry storm: the permanent error was met once
    assert world.calls[world.page_ids[0]].calls == 1
    state = crawl_state(settings, world.page_ids[0])
    assert state["status"] == "failed" and "100" in state["last_error"]


def test_two_requests_for_one_page_make_one_crawl(settings: Settings, fake_graph: Any) -> None:
    world = GraphWorld.generate(seed=5, conversations=12)
    graph = fake_graph(world, conversations_cap=5)
    page = world.page_ids[0]
    # 5 calls/s: the first crawl is still running when the second request arrives
    running = start_worker(settings, graph, fast_crawler(calls_per_second=5.0))
    try:
        first, second = new_request(page, full=True), new_request(page, full=True)
        submit(settings, first)
        submit(settings, second)
        joined = wait_status(settings, second.crawl_id, {"joined", "done", "failed"})
        done = wait_status(settings, first.crawl_id, {"done", "failed"})
    finally:
        running.stop()
    assert joined.status == "joined" and joined.joined_crawl_id == first.crawl_id
    assert done.status == "done"
    assert running.worker.stats.joined == 1
    conversations_calls = 3  # 12 conversations, 5 per page
    assert world.calls[page].calls == conversations_calls + 12
    assert crawl_state(settings, page)["joined_requests"] == 1


def test_throttling_pauses_the_page_and_resumes(settings: Settings, fake_graph: Any) -> None:
    world = GraphWorld.generate(
        seed=11,
        pages=2,
        conversations=6,
        faults=Faults(throttle_every=4, regain_minutes=0.5 / 60),
    )
    graph = fake_graph(world)
    running = start_worker(settings, graph)
    try:
        records = [new_request(p, full=True) for p in world.page_ids]
        for r in records:
            submit(settings, r)
        views = [wait_status(settings, r.crawl_id, {"done", "failed"}) for r in records]
        want = set().union(*(expected_rows(world, p) for p in world.page_ids))
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert [v.status for v in views] == ["done", "done"]
    assert all(v.throttle_waits >= 1 for v in views)
    assert as_rows(events) == want


def test_incremental_crawl_after_a_full_one(settings: Settings, fake_graph: Any) -> None:
    world = GraphWorld.generate(seed=13, conversations=20)
    graph = fake_graph(world, conversations_cap=10)
    page = world.page_ids[0]
    running = start_worker(settings, graph)
    try:
        full = new_request(page, full=True)
        submit(settings, full)
        assert wait_status(settings, full.crawl_id, {"done", "failed"}).status == "done"
        convs = world.conversations[page]
        new = [
            world.add_message(convs[5].thread_id, text="later"),
            world.add_message(convs[15].thread_id, text="later too", from_page=True),
        ]
        again = new_request(page, full=False)
        submit(settings, again)
        view = wait_status(settings, again.crawl_id, {"done", "failed"})
        want = expected_rows(world, page)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert view.status == "done"
    assert view.messages == 2 and view.api_calls == 3
    assert as_rows(events) == want
    assert {e.mid for e in events if e.text in ("later", "later too")} == {m.mid for m in new}
    state = crawl_state(settings, page)
    assert state["crawl_id"] == again.crawl_id and state["since_watermark"] is not None


def test_a_second_worker_takes_over_when_one_leaves(settings: Settings, fake_graph: Any) -> None:
    world = GraphWorld.generate(seed=19, pages=3, conversations=40)
    graph = fake_graph(world, conversations_cap=10)
    crawler = fast_crawler(calls_per_second=30.0)
    workers = [start_worker(settings, graph, crawler), start_worker(settings, graph, crawler)]
    leaving = None
    try:
        deadline = time.monotonic() + 60
        while not all(w.worker.assigned_partitions for w in workers):
            assert time.monotonic() < deadline, "the group never balanced"
            time.sleep(0.05)
        records = [new_request(p, full=True) for p in world.page_ids]
        submit(settings, *records)
        while sum(c.calls for c in world.calls.values()) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The busier worker leaves the group mid-crawl: its pages move to the other.
        leaving = max(workers, key=lambda w: w.worker.stats.steps)
        staying = next(w for w in workers if w is not leaving)
        leaving.stop()
        views = [wait_status(settings, r.crawl_id, {"done", "failed"}) for r in records]
        want = set().union(*(expected_rows(world, p) for p in world.page_ids))
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        for w in workers:
            if w is not leaving:
                w.stop()
    assert [v.status for v in views] == ["done"] * 3
    assert as_rows(events) == want
    assert leaving.worker.stats.done < 3
    assert staying.worker.stats.steps > 0 and staying.worker.stats.done >= 1


@pytest.mark.parametrize("ending", ["done", "failed"])
def test_an_end_postgres_did_not_take_is_written_by_the_next_owner(
    settings: Settings, fake_graph: Any, ending: str
) -> None:
    """A crawl's last step whose "done"/"failed" write Postgres does not take (the
    worker waits for it) and which a stop then abandons must stay unhandled: the next
    owner runs it again and writes the end, instead of dropping the record as a
    duplicate by a committed mark."""
    faults = Faults(permanent_code=100) if ending == "failed" else Faults()
    # no conversations: the first step lists an empty page and ends the crawl
    world = GraphWorld.generate(seed=29, conversations=0, faults=faults)
    graph = fake_graph(world)
    page = world.page_ids[0]
    crawler = fast_crawler()
    first = start_worker(settings, graph, crawler)
    record = new_request(page, full=True)
    url = settings.database_url.get_secret_value()
    with psycopg.connect(url) as blocker:
        deadline = time.monotonic() + 60
        while first.worker.assigned_partitions < 3:
            assert time.monotonic() < deadline, "the worker never got its partitions"
            time.sleep(0.05)
        # Postgres does not take the end: every write of crawl_state waits for this lock.
        blocker.execute(
            sql.SQL("LOCK TABLE {}.crawl_state IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(settings.db_schema)
            )
        )
        submit(settings, record)
        while page not in world.calls or world.calls[page].calls < 1:
            assert time.monotonic() < deadline, "the step never ran"
            time.sleep(0.05)
        time.sleep(1)
        assert not first.done.done(), "the worker exited instead of waiting for Postgres"
        # the stop abandons the step waiting for its write
        first.stop()
        blocker.rollback()
    assert world.calls[page].calls == 1
    # what the stopped worker committed must not call that step handled
    topic = settings.topic("crawl")
    reader = Consumer({**settings.kafka_config(), "group.id": crawler.group})
    try:
        parts = reader.list_topics(topic, timeout=10).topics[topic].partitions
        committed = reader.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    finally:
        reader.close()
    marks = [PartitionBook.parse_marks(tp.metadata).get(page) for tp in committed]
    assert Mark(record.crawl_id, 0, True) not in marks, marks
    second = start_worker(settings, graph, crawler)
    try:
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
    finally:
        second.stop()
    assert view.status == ending
    assert world.calls[page].calls == 2  # the last step ran once more
    state = crawl_state(settings, page)
    assert state["status"] == ending and state["crawl_id"] == record.crawl_id
    assert (state["last_completed_at"] is not None) == (ending == "done")


def test_a_joined_request_read_again_after_its_crawl_ended_starts_nothing(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    """A request that joined a crawl is read again by the next owner when the committed
    offset lags behind it (here: another page's step below it is throttled for a
    minute). By then the crawl it joined has finished, and the page's committed mark
    says so; the request must not start a second crawl of the page."""
    settings = make_schema(base=make_topics(partitions=1))
    # Every 5th call of a page is throttled for a minute; a crawl here makes 4 calls.
    world = GraphWorld.generate(
        seed=43, pages=2, conversations=3, faults=Faults(throttle_every=5, regain_minutes=1.0)
    )
    graph = fake_graph(world)
    slow, page = world.page_ids
    crawler = fast_crawler()

    def calls(p: str) -> int:
        return world.calls[p].calls if p in world.calls else 0

    first = start_worker(settings, graph, crawler)
    try:
        warm = new_request(slow, full=True)
        submit(settings, warm)
        assert wait_status(settings, warm.crawl_id, {"done", "failed"}).status == "done"
        assert calls(slow) == 4
        # The slow page's next crawl is throttled at its first call: its record stays in
        # flight, and the committed offset stays below everything after it.
        stuck = new_request(slow, full=True)
        submit(settings, stuck)
        deadline = time.monotonic() + 30
        while calls(slow) < 5:
            assert time.monotonic() < deadline, "the slow page was never throttled"
            time.sleep(0.05)
        crawl, joining = new_request(page, full=True), new_request(page, full=True)
        submit(settings, crawl, joining)
        assert wait_status(settings, joining.crawl_id, {"joined", "done", "failed"}).status == (
            "joined"
        )
        assert wait_status(settings, crawl.crawl_id, {"done", "failed"}).status == "done"
        assert calls(page) == 4
        pages = first.worker.pages
        assert pages is not None
        deadline = time.monotonic() + 30
        while page in pages.runners:  # its end is committed (with the finished mark)
            assert time.monotonic() < deadline, "the page's runner never retired"
            time.sleep(0.05)
    finally:
        first.stop()
    second = start_worker(settings, graph, crawler)
    try:
        # The next owner reads from the stuck record on: the page's 4 steps and the
        # joined request again. Either all 5 are dropped, or the request starts a crawl
        # (whose first call, the page's 5th, is throttled).
        deadline = time.monotonic() + 30
        while second.worker.stats.duplicates < 5 and calls(page) == 4:
            assert time.monotonic() < deadline, "the records were never read again"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        second.stop()
    assert calls(page) == 4, "the joined request started a second crawl"
    state = crawl_state(settings, page)
    assert state["crawl_id"] == crawl.crawl_id and state["status"] == "done"
    assert read_view_of(settings, joining.crawl_id).status == "joined"


def read_view_of(settings: Settings, crawl_id: str) -> Any:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        return read_view(conn, settings.db_schema, crawl_id)
