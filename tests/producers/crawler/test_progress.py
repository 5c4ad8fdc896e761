"""Running crawls' progress written for all pages at once (_progress.py), against the
real Postgres: one transaction per flush, the newest entry per page, and a crawl's end
never overwritten by a stale entry."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from convsync.settings import Settings
from producers.crawler._progress import ProgressBuffer
from producers.crawler.request import new_request
from producers.crawler.state import CrawlStateStore, Progress
from schemas.crawl import CrawlCounters, CrawlRequest, CrawlStep
from tests.fixtures.postgres import MakeSchema

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.fixture
def settings(make_schema: MakeSchema) -> Settings:
    return make_schema()


def states(settings: Settings) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT s.page_id, s.status, s.step_seq, s.api_calls, h.status, h.step_seq"
                " FROM {0}.crawl_state AS s JOIN {0}.crawl_history AS h USING (crawl_id)"
            ).format(sql.Identifier(settings.db_schema))
        ).fetchall()
    return {str(r[0]): tuple(r[1:]) for r in rows}


def update_times(settings: Settings) -> set[Any]:
    """The distinct ``updated_at`` (``now()``: one per transaction) of the state rows."""
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT updated_at FROM {}.crawl_state").format(
                sql.Identifier(settings.db_schema)
            )
        ).fetchall()
    return {r[0] for r in rows}


def step(record: CrawlRequest, seq: int, status: str = "running") -> Progress:
    counters = CrawlCounters(api_calls=seq)
    return Progress(record, status, CrawlStep(started_at=1, counters=counters), seq)  # type: ignore[arg-type]


async def test_one_flush_writes_the_newest_progress_of_every_page(
    settings: Settings, store: CrawlStateStore
) -> None:
    buffer = ProgressBuffer(store, interval=60.0)
    records = [new_request(str(9000 + i), full=True) for i in range(50)]
    for r in records:
        await store.project(step(r, 1))
    for seq in range(2, 12):
        for r in records:
            await buffer.offer(step(r, seq))
    # nothing written yet: the steps did not wait for Postgres
    assert {s[2] for s in states(settings).values()} == {1}
    assert len(buffer.pending) == 50  # one entry per page: the bound
    await buffer.flush()
    got = states(settings)
    assert len(got) == 50
    assert set(got.values()) == {("running", 11, 11, "running", 11)}
    assert buffer.flushes == 1 and buffer.pending == {}


async def test_a_flush_is_one_transaction_for_all_pages(
    settings: Settings, store: CrawlStateStore
) -> None:
    buffer = ProgressBuffer(store, interval=60.0)
    records = [new_request(str(9100 + i), full=True) for i in range(40)]
    for r in records:
        await store.project(step(r, 1))
        await buffer.offer(step(r, 2))
    await buffer.flush()
    # now() is the transaction's start: 40 rows with one time were written by one
    # transaction (one per page would give 40 times)
    assert len(update_times(settings)) == 1


async def test_a_crawls_end_is_never_overwritten_by_a_pending_entry(
    settings: Settings, store: CrawlStateStore
) -> None:
    buffer = ProgressBuffer(store, interval=60.0)
    record = new_request("9200", full=True)
    await store.project(step(record, 1))
    await buffer.offer(step(record, 5))
    done = step(record, 6, "done")
    await buffer.write("9200", lambda: store.project(done))
    assert buffer.pending == {}
    # an entry offered late (a step's progress racing the end) is refused by the guards
    await buffer.offer(step(record, 5))
    await buffer.flush()
    assert states(settings)["9200"] == ("done", 6, 6, "done", 6)


async def test_interval_zero_writes_each_progress_at_once(
    settings: Settings, store: CrawlStateStore
) -> None:
    buffer = ProgressBuffer(store, interval=0.0)
    record = new_request("9300", full=True)
    await store.project(step(record, 1))
    await buffer.offer(step(record, 2))
    assert states(settings)["9300"][1] == 2 and buffer.pending == {}
    await buffer.run_forever()  # returns at once: nothing to flush
