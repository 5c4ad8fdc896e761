"""Cancelled crawls read for all of a worker's running crawls at once (_cancels.py),
against the real Postgres. End to end (a worker stopping a cancelled crawl, the page
crawled again): test_resume.py."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from convsync.errors import RetryableError
from convsync.settings import Settings
from producers.crawler import _cancels
from producers.crawler._cancels import CancelWatch
from producers.crawler.request import cancel, new_request
from producers.crawler.state import CrawlStateStore, Progress
from schemas.crawl import CrawlCounters, CrawlRequest, CrawlStep
from tests.fixtures.postgres import MakeSchema

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.fixture
def settings(make_schema: MakeSchema) -> Settings:
    return make_schema()


async def running(store: CrawlStateStore, page: str) -> CrawlRequest:
    record = new_request(page, full=True)
    step = CrawlStep(started_at=1, counters=CrawlCounters(api_calls=1))
    await store.project(Progress(record, "running", step, 1))  # type: ignore[arg-type]
    return record


def cancel_now(settings: Settings, crawl_id: str) -> None:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        assert cancel(conn, settings.db_schema, crawl_id)


async def test_one_read_tells_every_stepped_crawl_whether_it_was_cancelled(
    settings: Settings, store: CrawlStateStore
) -> None:
    watch = CancelWatch(store, interval=60.0)
    a, b = await running(store, "9101"), await running(store, "9102")
    assert not await watch.cancelled(a.crawl_id)
    assert not await watch.cancelled(b.crawl_id)
    cancel_now(settings, a.crawl_id)
    # Not read yet: a step asks memory, never Postgres.
    assert not await watch.cancelled(a.crawl_id)
    await watch.read()
    assert watch.reads == 1
    assert await watch.cancelled(a.crawl_id)
    assert not await watch.cancelled(b.crawl_id)


async def test_crawls_no_longer_stepped_are_forgotten(store: CrawlStateStore) -> None:
    watch = CancelWatch(store, interval=0.01)
    for i in range(30):
        await watch.cancelled(f"old-{i}")
    await asyncio.sleep(_cancels.FORGET_AFTER * 0.01 + 0.05)
    await watch.cancelled("new")
    await watch.read()
    assert list(watch.stepped) == ["new"]


async def test_interval_zero_reads_the_row_before_each_step(
    settings: Settings, store: CrawlStateStore
) -> None:
    watch = CancelWatch(store, interval=0)
    record = await running(store, "9103")
    assert not await watch.cancelled(record.crawl_id)
    cancel_now(settings, record.crawl_id)
    assert await watch.cancelled(record.crawl_id)
    assert watch.reads == 0 and not watch.stepped


async def test_a_failed_read_is_logged_and_the_watch_goes_on(
    store: CrawlStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    watch = CancelWatch(store, interval=0.01)
    await watch.cancelled("c-1")
    calls = []

    async def fails(crawl_ids: list[str]) -> set[str]:
        calls.append(crawl_ids)
        if len(calls) == 1:
            raise RetryableError("crawl state read failed: down")
        return {"c-1"}

    store.cancelled_among = fails  # type: ignore[method-assign]
    task = asyncio.create_task(watch.run_forever())
    with caplog.at_level(logging.WARNING, logger=_cancels.__name__):
        try:
            for _ in range(500):
                if await watch.cancelled("c-1"):
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
    assert await watch.cancelled("c-1")
    assert len(calls) >= 2
    assert "cancelled crawls not read" in caplog.text
