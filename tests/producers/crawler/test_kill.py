"""SIGKILL the crawler worker process during a crawl: it resumes, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from consumers.materializer import Materializer
from convsync.db import connect
from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphWorld
from deploy.simulator.graph_instagram import instagram_inbox
from producers.crawler.request import new_request, submit
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import (
    BIG_PAGE,
    as_rows,
    big_world,
    expected_rows,
    read_events,
)
from tests.producers.crawler.test_worker import wait_status

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def calls_needed(world: GraphWorld, page: str, *, conv_cap: int, msg_cap: int) -> int:
    """Graph calls an uninterrupted full crawl makes."""
    convs = world.conversations[page]
    pages = -(-len(convs) // conv_cap)
    return pages + sum(-(-len(c.messages) // msg_cap) for c in convs if c.psid is not None)


def spawn_worker(
    settings: Settings,
    graph: Any,
    group: str,
    log: Path,
    *,
    instance: str | None = "worker-1",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``convsync crawler`` as a subprocess (static member ``instance`` if given)."""
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_DB_SCHEMA": settings.db_schema,
        "CONVSYNC_GRAPH_URL": graph.url,
        "CONVSYNC_PAGE_TOKENS": graph.tokens_json(),
        "CONVSYNC_CRAWL_GROUP": group,
        "CONVSYNC_CRAWL_CALLS_PER_SECOND": "40",
        "CONVSYNC_CRAWL_BACKOFF_BASE": "0.01",
        "CONVSYNC_CRAWL_BACKOFF_MAX": "0.1",
        "CONVSYNC_CRAWL_MESSAGES_LIMIT": "10",
        "CONVSYNC_CRAWL_CONVERSATIONS_LIMIT": "10",
    }
    if instance is not None:
        env["CONVSYNC_CRAWL_INSTANCE_ID"] = instance
    env.update(extra_env or {})
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "crawler"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def terminate(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM ``proc``; return the seconds until it exited (30 s at most)."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    return time.monotonic() - sent


def test_sigkilled_worker_resumes_and_completes(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(
        seed=21,
        conversations=60,
        max_messages=25,
        long_threads=3,
        no_user=1,
        faults=Faults(details_limit=20),
    )
    graph = fake_graph(world, conversations_cap=10, messages_cap=10)
    page = world.page_ids[0]
    group = f"crawler-kill-{time.monotonic_ns()}"
    log = tmp_path / "worker.log"
    record = new_request(page, full=True)
    submit(settings, record)
    kills = 0
    calls_at_last_kill = 0
    proc = spawn_worker(settings, graph, group, log)
    try:
        # Kill once the worker is making calls, five times, at different moments.
        for delay in (0.3, 0.5, 0.2, 0.6, 0.4):
            start_calls = world.calls.get(page, None)
            before = start_calls.calls if start_calls else 0
            deadline = time.monotonic() + 60
            while (world.calls[page].calls if page in world.calls else 0) <= before:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "worker made no Graph call"
                time.sleep(0.02)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            calls_at_last_kill = world.calls[page].calls
            kills += 1
            proc = spawn_worker(settings, graph, group, log)
        view = wait_status(settings, record.crawl_id, {"done", "failed"}, timeout=120)
    finally:
        terminate(proc)
    assert view.status == "done", view.last_error
    want = expected_rows(world, page)
    events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    assert as_rows(events) == want
    # At most one Graph page fetched again per kill ...
    needed = calls_needed(world, page, conv_cap=10, msg_cap=10)
    assert needed <= world.calls[page].calls <= needed + kills
    # ... so duplicated event ids are at most one page of messages per kill.
    dupes = sum(n - 1 for n in Counter(e.event_id for e in events).values())
    assert dupes <= kills * 10
    assert kills == 5
    assert calls_at_last_kill < needed, "the crawl had finished before the last kill"


def test_sigkilled_five_times_during_a_big_backfill(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any, tmp_path: Path
) -> None:
    """The issue's 10,000-conversation page (faults on), the worker SIGKILLed 5 times
    spread over the crawl: Kafka and Postgres end equal to the fake's dataset."""
    settings = make_schema(base=make_topics(partitions=3))
    world = big_world(41)
    graph = fake_graph(world, conversations_cap=100, messages_cap=25)
    page = world.page_ids[0]
    needed = calls_needed(world, page, conv_cap=100, msg_cap=25)
    group = f"crawler-bigkill-{time.monotonic_ns()}"
    log = tmp_path / "worker.log"
    env = {
        "CONVSYNC_CRAWL_CALLS_PER_SECOND": "1000",
        "CONVSYNC_CRAWL_CONVERSATIONS_LIMIT": "100",
        "CONVSYNC_CRAWL_MESSAGES_LIMIT": "25",
    }
    record = new_request(page, full=True)
    submit(settings, record)
    kill_calls: list[int] = []
    proc = spawn_worker(settings, graph, group, log, extra_env=env)
    try:
        # Each kill lands once the crawl has made this share of the calls it needs.
        for share in (0.1, 0.3, 0.5, 0.7, 0.85):
            deadline = time.monotonic() + 300
            while (world.calls[page].calls if page in world.calls else 0) < needed * share:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"crawl stalled before {share:.0%}"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kill_calls.append(world.calls[page].calls)
            proc = spawn_worker(settings, graph, group, log, extra_env=env)
        view = wait_status(settings, record.crawl_id, {"done", "failed"}, timeout=600)
    finally:
        terminate(proc)
    assert view.status == "done", view.last_error
    assert len(kill_calls) == 5 and kill_calls[-1] < needed, "the kills were not during the crawl"
    want = expected_rows(world, page)
    events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want), timeout=180)
    assert as_rows(events) == want
    # A kill re-runs at most the step in flight: one Graph page of records per kill.
    dupes = sum(n - 1 for n in Counter(e.event_id for e in events).values())
    assert dupes <= 5 * 100
    # Postgres, through the materializer: one row per message, equal to the truth.
    Materializer.from_settings(settings, group=f"mat-{time.monotonic_ns()}").run_to_end()
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, mid, text, direction FROM {}.events WHERE kind = 'message'"
            ).format(sql.Identifier(settings.db_schema))
        ).fetchall()
    assert len(rows) == len({r[2] for r in rows}) == len(want)
    assert {tuple(r) for r in rows} == want
    print(f"\n{BIG_PAGE} conversations, {len(want)} messages, kills at calls {kill_calls}/{needed}")


def test_fenced_static_member_rejoins_and_completes(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any, tmp_path: Path
) -> None:
    """A static member fenced by another with its instance id (what a session timeout on
    a starved machine also leads to) gets a fatal consumer error: the worker starts a new
    consumer instead of sitting on the dead one, and the crawl completes."""
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=33, conversations=200, max_messages=25, long_threads=3)
    graph = fake_graph(world, conversations_cap=10, messages_cap=10)
    page = world.page_ids[0]
    group = f"crawler-fence-{time.monotonic_ns()}"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    env = {"CONVSYNC_CRAWL_CALLS_PER_SECOND": "20"}
    record = new_request(page, full=True)
    submit(settings, record)
    a = spawn_worker(settings, graph, group, log_a, instance="same-id", extra_env=env)
    b: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while (world.calls[page].calls if page in world.calls else 0) < 20:
            assert a.poll() is None, log_a.read_text()
            assert time.monotonic() < deadline, "worker made no Graph call"
            time.sleep(0.05)
        # b joins with a's instance id: the coordinator fences a.
        b = spawn_worker(settings, graph, group, log_b, instance="same-id", extra_env=env)
        deadline = time.monotonic() + 90
        while "rejoining the group" not in log_a.read_text():
            assert a.poll() is None, log_a.read_text()[-3000:]
            assert time.monotonic() < deadline, "a was not fenced: " + log_a.read_text()[-3000:]
            time.sleep(0.1)
        b.send_signal(signal.SIGKILL)
        b.wait(10)
        assert world.calls[page].calls < calls_needed(world, page, conv_cap=10, msg_cap=10), (
            "the crawl had finished before a was fenced"
        )
        view = wait_status(settings, record.crawl_id, {"done", "failed"}, timeout=180)
        assert a.poll() is None, "a exited instead of rejoining"
    finally:
        terminate(a)
        if b is not None and b.poll() is None:
            b.kill()
            b.wait(10)
    assert view.status == "done", view.last_error
    text = log_a.read_text()
    assert "crawl consumer failed fatally" in text
    want = expected_rows(world, page)
    events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    assert as_rows(events) == want


def test_sigkilled_worker_resumes_an_instagram_crawl(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any, tmp_path: Path
) -> None:
    """The account's crawl goes through its page: killed three times, it resumes from its
    own steps, at most one Graph page again per kill, and equals the account's truth."""
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=22, conversations=3)
    page, account = world.page_ids[0], "17841400000000033"
    inbox = instagram_inbox(seed=22, account_id=account, conversations=60, max_messages=25)
    world.link_instagram(page, account, inbox)
    graph = fake_graph(world, conversations_cap=10, messages_cap=10)
    group = f"crawler-kill-ig-{time.monotonic_ns()}"
    log = tmp_path / "worker.log"
    record = new_request(account, full=True, via_page=page)
    submit(settings, record)
    kills = 0
    proc = spawn_worker(settings, graph, group, log)
    try:
        for delay in (0.3, 0.5, 0.2):
            before = world.calls[page].calls if page in world.calls else 0
            deadline = time.monotonic() + 60
            while (world.calls[page].calls if page in world.calls else 0) <= before:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "worker made no Graph call"
                time.sleep(0.02)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            calls_at_last_kill = world.calls[page].calls
            kills += 1
            proc = spawn_worker(settings, graph, group, log)
        view = wait_status(settings, record.crawl_id, {"done", "failed"}, timeout=120)
    finally:
        terminate(proc)
    assert view.status == "done", view.last_error
    want = expected_rows(world, account)
    events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    assert as_rows(events) == want
    assert {(e.platform, e.page_id) for e in events} == {("instagram", account)}
    needed = -(-len(inbox) // 10) + sum(-(-len(c.messages) // 10) for c in inbox)
    # Every call was the page's (the account is no Graph node of its own).
    assert set(world.calls) == {page}
    assert needed <= world.calls[page].calls <= needed + kills
    assert calls_at_last_kill < needed, "the crawl had finished before the last kill"
