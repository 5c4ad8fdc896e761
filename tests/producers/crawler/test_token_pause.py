"""A page token that stops working pauses the crawl (cursor kept, said once); a new token
set through the pages store resumes it from its cursor to a complete, duplicate-free end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import sql

from admin.status import collect
from convsync import pages
from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.exceptions import GraphPermanentError
from producers.crawler.fetcher import token_trouble
from producers.crawler.graph import Usage, classify
from producers.crawler.ops import CrawlerCollector, Sources
from producers.crawler.request import new_request, submit
from producers.crawler.worker import CrawlWorker
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import (
    as_rows,
    expected_rows,
    fast_crawler,
    read_events,
    start_worker,
)
from tests.producers.crawler.test_worker import crawl_state, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(make_topics: MakeTopics, make_schema: MakeSchema) -> Settings:
    return make_schema(base=make_topics(partitions=3))


def page_row(settings: Settings, page_id: str) -> dict[str, Any]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        cur = conn.execute(
            sql.SQL("SELECT * FROM {}.pages WHERE page_id = %s").format(
                sql.Identifier(settings.db_schema)
            ),
            (page_id,),
        )
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([d.name for d in cur.description], row, strict=True))


def scrape(worker: CrawlWorker) -> str:
    """Return the crawler's /metrics text for ``worker`` (the collector ops.serve uses)."""
    registry = CollectorRegistry()
    registry.register(
        CrawlerCollector(
            Sources(
                stats=lambda: worker.stats,
                partitions=lambda: worker.assigned_partitions,
                limiter=worker.app_limiter,
                reconciler=None,
                reconnect=lambda: worker.needing_reconnect,
            )
        )
    )
    return generate_latest(registry).decode()


def put_token(settings: Settings, page_id: str, token: str, platform: str = "messenger") -> None:
    async def put() -> None:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), autocommit=True
        ) as conn:
            await pages.put_page(
                conn,
                settings.db_schema,
                pages.TokenCipher(settings.secret_key),
                page_id=page_id,
                platform=platform,
                name=None,
                token=token,
            )

    asyncio.run(put())


def test_expired_token_pauses_then_a_new_token_resumes_from_the_cursor(
    settings: Settings, fake_graph: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world = GraphWorld.generate(seed=11, conversations=40, long_threads=2)
    graph = fake_graph(world, conversations_cap=5, messages_cap=5)
    page = world.page_ids[0]
    # The token expires after 6 accepted calls: mid-crawl, with a cursor.
    graph.server.expire_after[page] = (6, 463)
    running = start_worker(settings, graph, fast_crawler(token_refresh=0.2))
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        view = wait_status(settings, record.crawl_id, {"paused", "done", "failed"})
        assert view.status == "paused", view.last_error
        row = page_row(settings, page)
        assert row["status"] == "needs_reconnect"
        assert row["status_message"] == "the token expired: reconnect the page"
        assert "190" in row["token_last_error"] and "463" in row["token_last_error"]
        assert row["paused_crawl"]["crawl_id"] == record.crawl_id
        assert row["paused_crawl"]["seq"] >= 1
        state = crawl_state(settings, page)
        assert state["status"] == "paused"
        assert state["conversations_cursor"] is not None  # the cursor is kept
        assert running.worker.needing_reconnect == 1
        assert "convsync_pages_needing_reconnect 1.0" in scrape(running.worker)
        # `convsync status` and the dashboard name it, with what to do
        attention = collect(settings).pages_attention
        assert [(p["page_id"], p["status"], p["crawl_paused"]) for p in attention] == [
            (page, "needs_reconnect", True)
        ]
        assert attention[0]["status_message"] == "the token expired: reconnect the page"
        # A request meanwhile joins the paused crawl; nothing is sent with the dead token
        # and the page is announced once, however long it waits.
        calls_before = graph.server.accepted[page]
        submit(settings, new_request(page, full=False))
        time.sleep(2.0)
        told = [r for r in caplog.records if "reconnect the page" in r.getMessage()]
        assert len(told) == 1, [r.getMessage() for r in told]
        assert told[0].levelno == logging.WARNING
        assert graph.server.accepted[page] == calls_before
        assert crawl_state(settings, page)["status"] == "paused"

        # The token is rotated at Meta and set through the store: the crawl resumes.
        graph.server.rotate_token(page, "tok-rotated")
        put_token(settings, page, "tok-rotated")
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
        want = expected_rows(world, page)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert as_rows(events) == want
    # nothing produced twice: the paused step ran once, with the new token
    twice = [i for i, n in Counter(e.event_id for e in events).items() if n > 1]
    assert not twice
    state = crawl_state(settings, page)
    assert state["status"] == "done"
    assert state["messages_fetched"] == len(want)
    row = page_row(settings, page)
    assert row["status"] == "active" and row["paused_crawl"] is None
    assert row["token_last_success_at"] is not None
    assert running.worker.needing_reconnect == 0
    assert "convsync_pages_needing_reconnect 0.0" in scrape(running.worker)
    assert collect(settings).pages_attention == []
    resumed = [r for r in caplog.records if "resumes from its cursor" in r.getMessage()]
    assert len(resumed) == 1


@pytest.mark.parametrize(
    ("code", "subcode", "told"),
    [
        (190, 463, "the token expired: reconnect the page"),
        (190, 467, "the token expired: reconnect the page"),
        (190, 460, "invalidated by a password change"),
        (190, 458, "revoked"),
        (190, None, "the token is invalid"),
        (10, None, "lacks a permission"),
        (200, None, "lacks a permission"),
        (299, None, "lacks a permission"),
        (100, None, None),
        (300, None, None),
        (None, None, None),
    ],
)
def test_which_graph_errors_are_token_trouble(
    code: int | None, subcode: int | None, told: str | None
) -> None:
    body: dict[str, Any] = {"error": {"message": "m", "code": code}}
    if subcode is not None:
        body["error"]["error_subcode"] = subcode
    error = classify(400, orjson.dumps(body), Usage())
    assert isinstance(error, GraphPermanentError)
    assert error.subcode == subcode
    said = token_trouble(error.code, error.subcode)
    if told is None:
        assert said is None
    else:
        assert said is not None and told in said


def test_a_paused_crawl_survives_a_restart_without_saying_it_again(
    settings: Settings, fake_graph: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world = GraphWorld.generate(seed=12, conversations=12)
    graph = fake_graph(world, conversations_cap=4, messages_cap=5)
    page = world.page_ids[0]
    graph.server.expire_after[page] = (3, 467)
    crawler = fast_crawler(token_refresh=0.2)
    running = start_worker(settings, graph, crawler)
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        assert wait_status(settings, record.crawl_id, {"paused", "done", "failed"}).status == (
            "paused"
        )
    finally:
        running.stop()
    # A new worker of the same group, started with the old CONVSYNC_PAGE_TOKENS: the
    # stored (dead) token is kept, nothing is sent with it, nothing is said again.
    running = start_worker(settings, graph, crawler)
    try:
        calls = graph.server.accepted[page]
        time.sleep(2.0)
        assert page_row(settings, page)["status"] == "needs_reconnect"
        assert graph.server.accepted[page] == calls
        told = [r for r in caplog.records if "reconnect the page" in r.getMessage()]
        assert len(told) == 1
        graph.server.rotate_token(page, "tok-2")
        put_token(settings, page, "tok-2")
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
        want = expected_rows(world, page)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert as_rows(events) == want
    assert crawl_state(settings, page)["messages_fetched"] == len(want)


def test_an_instagram_crawl_refused_by_its_pages_token_fails_resumable_and_resumes(
    settings: Settings, fake_graph: Any
) -> None:
    """The token of an account's crawl is its linked page's: a token error marks the page
    (its own paused-crawl slot untouched) and fails the account's crawl with its cursor
    kept; with a new token the next request continues from that cursor."""
    from deploy.simulator.graph_instagram import instagram_inbox

    world = GraphWorld.generate(seed=13, conversations=3)
    page, account = world.page_ids[0], "17841400000000091"
    world.link_instagram(
        page, account, instagram_inbox(seed=13, account_id=account, conversations=30)
    )
    graph = fake_graph(world, conversations_cap=5, messages_cap=5)
    graph.server.expire_after[page] = (6, 463)
    running = start_worker(settings, graph, fast_crawler(token_refresh=0.2))
    try:
        first = new_request(account, full=True, via_page=page)
        submit(settings, first)
        view = wait_status(settings, first.crawl_id, {"paused", "done", "failed"})
        assert view.status == "failed", view.status
        assert "reconnect" in (view.last_error or "")
        row = page_row(settings, page)
        assert row["status"] == "needs_reconnect" and row["paused_crawl"] is None
        graph.server.rotate_token(page, "tok-rotated")
        put_token(settings, page, "tok-rotated")
        second = new_request(account, full=True, via_page=page)
        submit(settings, second)
        view = wait_status(settings, second.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
        want = expected_rows(world, account)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    assert as_rows(events) == want
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        resumed_from = conn.execute(
            sql.SQL("SELECT resumed_from FROM {}.crawl_history WHERE crawl_id = %s").format(
                sql.Identifier(settings.db_schema)
            ),
            (second.crawl_id,),
        ).fetchone()
    assert resumed_from == (first.crawl_id,)
    assert page_row(settings, page)["status"] == "active"


def test_the_reconciler_crawls_messenger_pages_of_the_table_never_an_account(
    settings: Settings,
) -> None:
    """An Instagram row is no page to crawl as one (its crawls go through a linked page,
    CONVSYNC_RECONCILE_INSTAGRAM); a page needing a reconnect waits for its token."""
    from producers.crawler.state import make_pool
    from producers.crawler.tokens import table_pages

    async def main() -> list[str]:
        pool = make_pool(settings.database_url.get_secret_value(), size=1)
        await pool.open(wait=True, timeout=10)
        try:
            return list(await table_pages(pool, settings.db_schema, {"503": "tok"})())
        finally:
            await pool.close()

    put_token(settings, "501", "tok")
    put_token(settings, "17841400000000502", "tok", platform="instagram")
    assert asyncio.run(main()) == ["501", "503"]
