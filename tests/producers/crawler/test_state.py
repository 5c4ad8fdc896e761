"""The crawl progress projection against the real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from convsync.settings import Settings
from producers.crawler.request import new_request, read_view
from producers.crawler.state import CrawlStateStore, Progress, make_pool, record_queued
from schemas.crawl import CrawlStep
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(make_schema: MakeSchema) -> Settings:
    return make_schema()


@pytest_asyncio.fixture
async def store(settings: Settings) -> AsyncIterator[CrawlStateStore]:
    pool = make_pool(settings.database_url.get_secret_value(), size=1)
    await pool.open()
    try:
        yield CrawlStateStore(pool, settings.db_schema)
    finally:
        await pool.close()


def joined_requests(settings: Settings, page_id: str) -> Any:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT joined_requests FROM {}.crawl_state WHERE page_id = %s").format(
                sql.Identifier(settings.db_schema)
            ),
            (page_id,),
        ).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.asyncio
@pytest.mark.parametrize("queued_first", [True, False])
async def test_a_redelivered_join_counts_once(
    settings: Settings, store: CrawlStateStore, queued_first: bool
) -> None:
    """The same join record projected twice (a redelivery) is one joined request."""
    page = "4242"
    running = new_request(page, full=True)
    await store.project(Progress(running, "running", CrawlStep(started_at=1), 1))
    joiner, other = new_request(page, full=False), new_request(page, full=True)
    if queued_first:
        # `convsync crawl` writes the queued row before it produces the request
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            record_queued(conn, settings.db_schema, joiner)
            record_queued(conn, settings.db_schema, other)
    join = Progress(joiner, "joined", None, 0, joined=running.crawl_id)
    await store.project(join)
    await store.project(join)
    assert joined_requests(settings, page) == 1
    # a second request is counted too, once
    await store.project(Progress(other, "joined", None, 0, joined=running.crawl_id))
    await store.project(Progress(other, "joined", None, 0, joined=running.crawl_id))
    assert joined_requests(settings, page) == 2
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        view = read_view(conn, settings.db_schema, joiner.crawl_id)
    assert view is not None
    assert view.status == "joined" and view.joined_crawl_id == running.crawl_id
