"""Page tokens go to the Graph API only: hostile crawl records and responses send nothing.

A listener on another port of 127.0.0.1 stands for the attacker's host. Crawl records
(produced straight to the crawl topic) and Graph responses (the fake's ``foreign_next``
fault, for a conversation list and for a message list) point at it. It must hear
nothing; each attacked crawl must end ``failed`` with its reason, never ``done``; the
poison records must be in the DLQ with theirs; the other pages' crawls go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import SecretStr

from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld, token_for
from producers.crawler.request import new_request, submit
from schemas.crawl import ConversationTodo, CrawlRequest, CrawlStep
from schemas.records import DeadLetter
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import as_rows, expected_rows, read_events, start_worker
from tests.producers.crawler.listener import RecordingListener
from tests.producers.crawler.test_worker import crawl_state, wait_status

pytestmark = pytest.mark.integration


APP_SECRET = "exfiltration-app-secret-41d2"


@pytest.fixture
def settings(make_topics: MakeTopics, make_schema: MakeSchema) -> Settings:
    return make_schema(base=make_topics(partitions=3))


@pytest.fixture
def listener() -> Iterator[RecordingListener]:
    heard = RecordingListener()
    yield heard
    heard.stop()


def produce_raw(settings: Settings, record: CrawlRequest) -> tuple[int, int]:
    """Produce ``record`` straight to the crawl topic; return its partition and offset."""
    producer = Producer({**settings.kafka_config(), "acks": "all"})
    where: list[tuple[int, int]] = []

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        where.append((msg.partition(), msg.offset()))

    producer.produce(
        settings.topic("crawl"), record.to_bytes(), record.page_id.encode(), on_delivery=delivered
    )
    producer.flush(30)
    assert where, "the hostile record was not delivered"
    return where[0]


def read_dlq(settings: Settings, n: int, timeout: float = 30.0) -> list[DeadLetter]:
    """Read the DLQ from the start until ``n`` letters are there (or the timeout)."""
    topic = settings.topic("dlq")
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"dlq-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    out.append(DeadLetter.model_validate_json(msg.value()))
    finally:
        consumer.close()
    return out


def hostile(
    page: str, listener: RecordingListener, *, seq: int, thread: str | None
) -> CrawlRequest:
    """A crawl record whose stored cursor points at the listener."""
    base = new_request(page, full=True)
    now = int(time.time() * 1000)
    if thread is None:
        step = CrawlStep(
            conversations_url=f"{listener.base_url}/{page}/conversations?platform=messenger",
            started_at=now,
        )
    else:
        todo = ConversationTodo(thread_id=thread, psid="9000001", updated_at=now)
        step = CrawlStep(
            conversations_exhausted=True,
            queue=(todo,),
            messages_url=f"{listener.base_url}/{thread}/messages?after=x",
            started_at=now,
        )
    return base.model_copy(update={"seq": seq, "step": step})


def test_hostile_records_and_responses_send_no_token_anywhere(
    settings: Settings, fake_graph: Any, listener: RecordingListener
) -> None:
    world = GraphWorld.generate(
        seed=31, pages=5, conversations=30, long_threads=2, long_thread_messages=40
    )
    p_list, p_thread, p_start, p_continue, p_plain = world.page_ids
    # A long thread of p_thread: its first message page already names the listener.
    thread = next(c for c in world.conversations[p_thread] if len(c.messages) == 40).thread_id
    world.faults.foreign_next = {p_list: listener.base_url, thread: listener.base_url}
    graph = fake_graph(world, conversations_cap=10, messages_cap=15)
    running = start_worker(settings, graph)
    try:
        # 1. Graph responses with a hostile paging.next, and a page nobody attacks.
        by_response = {p: new_request(p, full=True) for p in (p_list, p_thread, p_plain)}
        submit(settings, *by_response.values())
        # 2. Hostile crawl records: a request that would start a crawl (seq 0) and a step
        #    of an unknown crawl (seq 3, which a worker runs as a continuation).
        start = hostile(p_start, listener, seq=0, thread=None)
        cont = hostile(
            p_continue, listener, seq=3, thread=world.conversations[p_continue][0].thread_id
        )
        where = {
            start.crawl_id: produce_raw(settings, start),
            cont.crawl_id: produce_raw(settings, cont),
        }
        ended = {
            r.crawl_id: wait_status(settings, r.crawl_id, {"done", "failed"})
            for r in (*by_response.values(), start, cont)
        }
        states = {p: crawl_state(settings, p) for p in (p_list, p_thread, p_start, p_continue)}
        # 3. The attacked pages are not wedged: a plain crawl of each goes through.
        again = {p: new_request(p, full=True) for p in (p_start, p_continue)}
        submit(settings, *again.values())
        after = {
            r.crawl_id: wait_status(settings, r.crawl_id, {"done", "failed"})
            for r in again.values()
        }
        letters = read_dlq(settings, 2)
        want = {p: expected_rows(world, p) for p in (p_plain, p_start, p_continue)}
        events = read_events(
            settings,
            until=lambda evs: all(want[p] <= {r for r in as_rows(evs) if r[0] == p} for p in want),
        )
    finally:
        running.stop()
        heard = listener.requests()

    # Nothing reached the listener: no request, so no Authorization header either.
    assert heard == [], [(h.method, h.path_qs, bool(h.authorization)) for h in heard]
    # Each attacked crawl failed, with a reason that says what was refused.
    for crawl, edge in (
        (by_response[p_list], "conversations"),
        (by_response[p_thread], "messages"),
    ):
        view = ended[crawl.crawl_id]
        assert view.status == "failed", (crawl.page_id, view.status)
        assert "paging.next" in view.last_error and "refused" in view.last_error, view.last_error
        assert f"/{edge}" in view.last_error and "port" in view.last_error, view.last_error
    for crawl, field in ((start, "conversations_url"), (cont, "messages_url")):
        view = ended[crawl.crawl_id]
        assert view.status == "failed", (crawl.page_id, view.status)
        assert "crawl record refused" in view.last_error and field in view.last_error
    # crawl_state says so too (before the plain crawls of step 3 replaced it).
    for crawl in (*by_response.values(), start, cont):
        if crawl.page_id != p_plain:
            state = states[crawl.page_id]
            assert (state["crawl_id"], state["status"]) == (crawl.crawl_id, "failed")
            assert state["last_error"] == ended[crawl.crawl_id].last_error
    # Both poison records are dead letters with their reason and where they were.
    assert len(letters) == 2, letters
    for letter in letters:
        original = CrawlRequest.from_bytes(letter.original_value())
        assert (letter.partition, letter.offset) == where[original.crawl_id]
        assert letter.component == "crawler" and letter.error_type == "ForeignUrlError"
        assert "crawl record refused" in letter.reason and "port" in letter.reason
    # The other pages' crawls went on and are complete.
    assert ended[by_response[p_plain].crawl_id].status == "done"
    assert {v.status for v in after.values()} == {"done"}
    for page, rows in want.items():
        assert {r for r in as_rows(events) if r[0] == page} == rows, page
    # The tokens did reach the fake Graph API (the crawls above were real).
    assert all(world.calls[p].served > 0 for p in (p_plain, p_start, p_continue))
    assert token_for(p_plain) not in str(heard)


@pytest.mark.parametrize("secret", [APP_SECRET, "another-app-secret"])
def test_every_graph_call_carries_the_app_secret_proof(
    settings: Settings, fake_graph: Any, secret: str
) -> None:
    # The fake checks appsecret_proof like Meta with "Require App Secret" on.
    world = GraphWorld.generate(seed=33, conversations=12, long_threads=1, long_thread_messages=30)
    graph = fake_graph(world, conversations_cap=5, messages_cap=10, app_secret=APP_SECRET)
    page = world.page_ids[0]
    running = start_worker(settings.model_copy(update={"app_secret": SecretStr(secret)}), graph)
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
    finally:
        running.stop()
    calls = world.calls.get(page)
    if secret == APP_SECRET:
        assert view.status == "done", view.last_error
        assert calls is not None and graph.server.proofs_checked == calls.calls > 12
    else:
        # Meta's answer to a wrong proof is a permanent error: one call, then failed.
        assert view.status == "failed" and "Invalid appsecret_proof" in view.last_error
        assert graph.server.proofs_checked == 1 and calls is None


def test_a_hostile_step_read_back_on_assignment_proves_nothing(
    settings: Settings, fake_graph: Any, listener: RecordingListener
) -> None:
    # A new owner reads the records above the committed offset and lets the newest
    # continuation of a page stand for its running crawl. A forged step must not: the
    # real request after it would join the forged crawl, which fails, and never run.
    world = GraphWorld.generate(seed=35, conversations=8)
    page = world.page_ids[0]
    graph = fake_graph(world, conversations_cap=5)
    request = new_request(page, full=True)
    submit(settings, request)
    forged = hostile(page, listener, seq=4, thread=world.conversations[page][0].thread_id)
    produce_raw(settings, forged)
    running = start_worker(settings, graph)  # both records are in the log before it starts
    try:
        view = wait_status(settings, request.crawl_id, {"done", "failed", "joined"})
        letters = read_dlq(settings, 1)
    finally:
        running.stop()
    assert view.status == "done", (view.status, view.joined_crawl_id, view.last_error)
    assert [CrawlRequest.from_bytes(d.original_value()).crawl_id for d in letters] == [
        forged.crawl_id
    ]
    assert listener.requests() == []
