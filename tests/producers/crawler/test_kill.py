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

from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphWorld
from producers.crawler.request import new_request, submit
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import as_rows, expected_rows, read_events
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
            [sys.executable, "-m", "convsync.cli", "crawler"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


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
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
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
