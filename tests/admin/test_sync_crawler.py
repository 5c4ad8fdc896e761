"""POST /pages/{page_id}/sync with the real crawler against the fake Graph API."""

from __future__ import annotations

import pytest

from convsync.errors import RetryableError
from convsync.kafka import make_producer
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.request import new_request, submit
from tests.admin.conftest import AdminEnv, kafka_unreachable
from tests.consumers.helpers import scalar, wait_for
from tests.producers.crawler.conftest import FakeGraph, fast_crawler, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_STATE = "SELECT status FROM {s}.crawl_state WHERE crawl_id = %s"
_HISTORY = "SELECT status FROM {s}.crawl_history WHERE crawl_id = %s"


def test_sync_joins_the_crawl_the_crawler_runs(admin_env: AdminEnv) -> None:
    world = GraphWorld.generate(seed=11, pages=1, conversations=40, max_messages=3)
    page = world.page_ids[0]
    graph = FakeGraph(world, conversations_cap=4, messages_cap=2)
    # Paced so the crawl is still running while the second request comes in.
    worker = start_worker(admin_env.settings, graph, fast_crawler(calls_per_second=10.0))
    try:
        first = admin_env.post(f"/pages/{page}/sync").json()
        assert first["joined"] is False
        crawl = first["crawl_id"]
        wait_for(
            lambda: scalar(admin_env.settings, _STATE, crawl) == "running",
            timeout=60,
            what="the crawl running",
        )
        r = admin_env.post(f"/pages/{page}/sync")
        assert r.status_code == 202
        assert r.json() == {"page_id": page, "crawl_id": crawl, "status": "running", "joined": True}
        active = admin_env.get("/dashboard/data").json()["active_syncs"]
        assert [a["crawl_id"] for a in active] == [crawl]
        assert active[0]["progress"] is None or 0 <= active[0]["progress"] <= 1
        wait_for(
            lambda: scalar(admin_env.settings, _HISTORY, crawl) == "done",
            timeout=120,
            what="the crawl done",
        )
        # Once it is done, a new request starts a new crawl.
        again = admin_env.post(f"/pages/{page}/sync").json()
        assert again["joined"] is False and again["crawl_id"] != crawl
        wait_for(
            lambda: scalar(admin_env.settings, _HISTORY, again["crawl_id"]) == "done",
            timeout=120,
            what="the second crawl done",
        )
        # The joined request produced nothing: two crawls in the history, both done.
        stats = admin_env.get("/dashboard/data").json()["sync_statistics"]
        assert [(s["page_id"], s["crawls"], s["succeeded"]) for s in stats] == [(page, 2, 2)]
        assert stats[0]["conversations_done"] >= 40
        assert stats[0]["last_success_at"] is not None and stats[0]["failed"] == 0
    finally:
        worker.stop()
        graph.stop()


def test_a_request_kafka_did_not_confirm_is_recorded_if_it_lands_later(
    admin_env: AdminEnv,
) -> None:
    world = GraphWorld.generate(seed=12, pages=1, conversations=6, max_messages=2)
    page = world.page_ids[0]
    record = new_request(page, full=True)
    with pytest.raises(RetryableError, match="not confirmed by Kafka"):
        submit(kafka_unreachable(admin_env.settings), record)
    assert scalar(admin_env.settings, _HISTORY, record.crawl_id) is None
    # Only the confirmation was lost: the record is on the topic after all. The crawler
    # runs it and records it in crawl_history from its first step on.
    producer = make_producer(admin_env.settings)
    producer.produce(admin_env.settings.topic("crawl"), key=page.encode(), value=record.to_bytes())
    assert producer.flush(30) == 0
    graph = FakeGraph(world)
    worker = start_worker(admin_env.settings, graph)
    try:
        wait_for(
            lambda: scalar(admin_env.settings, _HISTORY, record.crawl_id) == "done",
            timeout=120,
            what="the late crawl done",
        )
    finally:
        worker.stop()
        graph.stop()
    stats = admin_env.get("/dashboard/data").json()["sync_statistics"]
    assert [(s["page_id"], s["crawls"], s["succeeded"]) for s in stats] == [(page, 1, 1)]
    assert stats[0]["conversations_done"] == 6
