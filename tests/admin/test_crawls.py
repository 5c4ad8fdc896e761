"""Sync history and control over HTTP, with the real crawler against the fake Graph API:
GET /crawls/{id}, GET /pages/{id}/crawls, DELETE /crawls/{id}, the sync's Location, and
the dashboard's pages needing attention."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from deploy.simulator.graph_api import GraphWorld
from tests.admin.conftest import TOKEN, AdminEnv
from tests.consumers.helpers import wait_for
from tests.producers.crawler.conftest import FakeGraph, fast_crawler, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def delete(env: AdminEnv, path: str) -> requests.Response:
    return requests.delete(
        env.base + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )


def wait_crawl(env: AdminEnv, crawl_id: str, statuses: set[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        r = env.get(f"/crawls/{crawl_id}")
        if r.status_code == 200:
            seen.update(r.json())
        return seen.get("status") in statuses

    wait_for(reached, timeout=120, what=f"crawl {crawl_id} in {statuses}")
    return seen


def test_sync_gives_the_crawls_location_which_tells_its_progress(admin_env: AdminEnv) -> None:
    world = GraphWorld.generate(seed=21, pages=1, conversations=12, max_messages=3)
    page = world.page_ids[0]
    graph = FakeGraph(world, conversations_cap=5)
    worker = start_worker(admin_env.settings, graph)
    try:
        r = admin_env.post(f"/pages/{page}/sync")
        assert r.status_code == 202
        crawl_id = r.json()["crawl_id"]
        assert r.headers["Location"] == f"/admin/crawls/{crawl_id}"
        # the Location is the crawl's resource
        got = requests.get(
            admin_env.server.url + r.headers["Location"],
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert got.status_code == 200 and got.json()["crawl_id"] == crawl_id
        crawl = wait_crawl(admin_env, crawl_id, {"done", "failed"})
    finally:
        worker.stop()
        graph.stop()
    truth = world.expected(page)
    assert crawl["status"] == "done" and crawl["page_id"] == page
    p = crawl["progress"]
    assert p["conversations_done"] == p["conversations_known"] == 12
    assert p["messages_done"] == len(truth["messages"]) and p["fraction"] == 1.0
    assert p["messages_known"] >= p["messages_done"] > 0
    assert crawl["calls"]["graph"] == world.calls[page].calls == 3 + 12
    assert crawl["throttle"] == {"pauses": 0, "seconds": 0.0}
    assert crawl["errors"]["last_error"] is None and crawl["skipped"]["conversations"] == []
    t = crawl["timings"]
    assert t["requested_at"] <= t["started_at"] <= t["finished_at"] and t["seconds"] >= 0
    assert crawl["attempt"] == 1 and crawl["resumable"] is False
    assert admin_env.get("/crawls/000000000000").status_code == 404
    assert admin_env.get("/crawls/bad id").status_code == 400


def test_a_pages_crawls_come_newest_first_in_pages(admin_env: AdminEnv) -> None:
    world = GraphWorld.generate(seed=22, pages=1, conversations=2, max_messages=1)
    page = world.page_ids[0]
    graph = FakeGraph(world)
    worker = start_worker(admin_env.settings, graph)
    made = []
    try:
        for _ in range(3):
            crawl_id = admin_env.post(f"/pages/{page}/sync").json()["crawl_id"]
            wait_crawl(admin_env, crawl_id, {"done"})
            made.append(crawl_id)
    finally:
        worker.stop()
        graph.stop()
    first = admin_env.get(f"/pages/{page}/crawls?limit=2").json()
    assert [c["crawl_id"] for c in first["items"]] == made[::-1][:2]
    second = admin_env.get(f"/pages/{page}/crawls?limit=2&cursor={first['next_cursor']}").json()
    assert [c["crawl_id"] for c in second["items"]] == made[:1]
    assert second["next_cursor"] is None
    # a cursor is good only for the list that made it
    r = admin_env.get(f"/pages/other/crawls?cursor={first['next_cursor']}")
    assert r.status_code == 400
    assert admin_env.get("/pages/other/crawls").json() == {"items": [], "next_cursor": None}
    assert admin_env.get(f"/pages/{page}/crawls?limit=0").status_code == 400


def test_delete_cancels_a_running_crawl_and_the_page_syncs_again(admin_env: AdminEnv) -> None:
    world = GraphWorld.generate(seed=23, pages=1, conversations=40, max_messages=2)
    page = world.page_ids[0]
    graph = FakeGraph(world, conversations_cap=4)
    worker = start_worker(admin_env.settings, graph, fast_crawler(calls_per_second=10.0))
    try:
        crawl_id = admin_env.post(f"/pages/{page}/sync").json()["crawl_id"]
        wait_crawl(admin_env, crawl_id, {"running"})
        r = delete(admin_env, f"/crawls/{crawl_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert delete(admin_env, f"/crawls/{crawl_id}").status_code == 409
        assert delete(admin_env, "/crawls/000000000000").status_code == 404
        wait_for(lambda: worker.worker.stats.cancelled == 1, timeout=30, what="the worker stops")
        calls = world.calls[page].calls
        time.sleep(0.6)
        assert world.calls[page].calls == calls
        # the page can be crawled again: a new crawl, not joined to the cancelled one
        again = admin_env.post(f"/pages/{page}/sync").json()
        assert again["joined"] is False and again["crawl_id"] != crawl_id
        done = wait_crawl(admin_env, again["crawl_id"], {"done", "failed"})
    finally:
        worker.stop()
        graph.stop()
    assert done["status"] == "done" and done["resumed_from"] is None
    assert done["progress"]["conversations_done"] == 40
    assert calls < 40 + 10


def test_a_failed_crawl_needs_attention_until_a_sync_resumes_it(admin_env: AdminEnv) -> None:
    world = GraphWorld.generate(seed=24, pages=1, conversations=20, max_messages=2)
    page = world.page_ids[0]
    world.faults.fail_after_calls = 15
    graph = FakeGraph(world, conversations_cap=5)
    worker = start_worker(admin_env.settings, graph, fast_crawler(max_attempts=2))
    try:
        failed_id = admin_env.post(f"/pages/{page}/sync").json()["crawl_id"]
        failed = wait_crawl(admin_env, failed_id, {"done", "failed"})
        assert failed["status"] == "failed" and failed["resumable"] is True
        assert "transient errors" in failed["errors"]["last_error"]
        attention = admin_env.get("/dashboard/data").json()["attention"]
        assert [(a["page_id"], a["reason"], a["crawl_id"]) for a in attention] == [
            (page, "crawl_failed", failed_id)
        ]
        world.faults.fail_after_calls = None
        r = admin_env.post(f"/pages/{page}/sync")
        resumed = wait_crawl(admin_env, r.json()["crawl_id"], {"done", "failed"})
    finally:
        worker.stop()
        graph.stop()
    assert resumed["status"] == "done"
    assert resumed["resumed_from"] == failed_id and resumed["attempt"] == 2
    assert admin_env.get(f"/crawls/{failed_id}").json()["resumed_by"] == resumed["crawl_id"]
    assert resumed["progress"]["conversations_done"] == 20
    assert admin_env.get("/dashboard/data").json()["attention"] == []


def test_a_page_whose_token_expired_needs_attention_until_a_new_token(
    admin_env: AdminEnv,
) -> None:
    world = GraphWorld.generate(seed=25, pages=1, conversations=20, max_messages=2)
    page = world.page_ids[0]
    graph = FakeGraph(world, conversations_cap=5)
    graph.server.expire_after[page] = (3, 463)
    worker = start_worker(admin_env.settings, graph, fast_crawler(token_refresh=0.2))
    try:
        crawl_id = admin_env.post(f"/pages/{page}/sync").json()["crawl_id"]
        wait_crawl(admin_env, crawl_id, {"paused", "done", "failed"})
        attention = admin_env.get("/dashboard/data").json()["attention"]
        assert [(a["page_id"], a["reason"], a["crawl_id"]) for a in attention] == [
            (page, "needs_reconnect", crawl_id)
        ]
        assert attention[0]["detail"] == "the token expired: reconnect the page"
        graph.server.rotate_token(page, "tok-new")
        r = admin_env.put(f"/pages/{page}", json={"access_token": "tok-new"})
        assert r.status_code == 204, r.text
        done = wait_crawl(admin_env, crawl_id, {"done", "failed"})
    finally:
        worker.stop()
        graph.stop()
    assert done["status"] == "done"
    assert admin_env.get("/dashboard/data").json()["attention"] == []
