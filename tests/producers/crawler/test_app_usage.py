"""The app-wide rate limit: X-App-Usage read apart, shared through Postgres, two workers."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import psycopg
import pytest

from convsync.errors import ThrottledError
from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphWorld
from producers.crawler.app_usage import AppLimiter
from producers.crawler.exceptions import AppThrottledError
from producers.crawler.graph import Usage, classify
from producers.crawler.request import new_request, read_view, submit
from producers.crawler.state import make_pool
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import fast_crawler, start_worker


def err(code: int) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": "limit"}})


def test_app_wide_throttling_is_told_apart_from_a_page_s() -> None:
    assert isinstance(classify(400, err(4), Usage(0, 0, 100, 30)), AppThrottledError)
    # a page code with the app header at 100 % and the page's own below: the app's limit
    e = classify(400, err(613), Usage(40, 0, 100, 12))
    assert isinstance(e, AppThrottledError) and e.retry_after == 12
    # the page's own limit: that page pauses, the others go on
    page = classify(400, err(80006), Usage(100, 5, 100, 0))
    assert isinstance(page, ThrottledError) and not isinstance(page, AppThrottledError)


def test_the_gap_grows_with_the_usage_and_holds_near_the_top() -> None:
    limiter = AppLimiter(fast_crawler(app_slow_down_at=70, app_hold_at=95, app_probe_every=2))
    gaps = []
    for percent in (0, 50, 70, 75, 80, 90, 94, 95, 100):
        limiter.observe(percent)
        gaps.append(limiter.gap())
    assert gaps[:3] == [0, 0, 0]
    assert all(a < b for a, b in itertools.pairwise(gaps[2:8]))
    assert gaps[-2:] == [2, 2]


@pytest.mark.asyncio
async def test_an_app_wide_pause_holds_every_call() -> None:
    limiter = AppLimiter(fast_crawler())
    limiter.throttled(0.3, app_wide=True)
    began = time.monotonic()
    await limiter.wait()
    assert time.monotonic() - began >= 0.25
    assert limiter.counts.app_throttles == 1 and limiter.counts.slowed == 1
    limiter.observe(10.0)  # the answer to that call: the app has room again
    limiter.next_at = 0.0
    limiter.throttled(5, app_wide=False)  # a page's throttle does not hold the app
    began = time.monotonic()
    await limiter.wait()
    assert time.monotonic() - began < 0.2


@pytest.mark.integration
@pytest.mark.asyncio
async def test_workers_share_the_usage_and_the_pause_through_postgres(
    make_schema: MakeSchema,
) -> None:
    settings = make_schema()
    one, two = AppLimiter(fast_crawler()), AppLimiter(fast_crawler())
    pool = make_pool(settings.database_url.get_secret_value(), size=1)
    await pool.open(wait=True, timeout=10)
    try:
        one.observe(88.0)
        await one.sync(pool, settings.db_schema)
        await two.sync(pool, settings.db_schema)
        assert two.percent == 88.0
        # an older observation never overwrites a newer one
        two.observe(20.0)
        two.observed_at -= 60
        await two.sync(pool, settings.db_schema)
        await one.sync(pool, settings.db_schema)
        assert one.percent == 88.0
        # an app-wide throttle seen by one worker pauses the other
        one.throttled(0.5, app_wide=True)
        await one.sync(pool, settings.db_schema)
        await two.sync(pool, settings.db_schema)
        began = time.monotonic()
        await two.wait()
        assert time.monotonic() - began >= 0.3
    finally:
        await pool.close()


def budget_world(pages: int, conversations: int, budget: int, rate: float) -> GraphWorld:
    return GraphWorld.generate(
        seed=41,
        pages=pages,
        conversations=conversations,
        max_messages=2,
        faults=Faults(app_budget=budget, app_rate=rate),
    )


def wait_done(settings: Settings, crawl_ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        while True:
            views = [read_view(conn, settings.db_schema, c) for c in crawl_ids]
            if all(v is not None and v.finished for v in views):
                return views
            if time.monotonic() > deadline:
                left = [c for c, v in zip(crawl_ids, views, strict=True) if not v or not v.finished]
                raise AssertionError(f"crawls not finished: {left}")
            time.sleep(0.2)


@pytest.mark.integration
def test_two_workers_many_pages_stay_within_the_app_budget(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    """Two workers crawl 12 pages whose calls together are several times an app budget
    that refills at 60 calls/s: no call is refused, every crawl is done."""
    settings = make_schema(base=make_topics(partitions=4))
    world = budget_world(pages=12, conversations=30, budget=60, rate=60.0)
    graph = fake_graph(world, conversations_cap=5, messages_cap=5)
    crawler = fast_crawler(calls_per_second=50.0)
    workers = [start_worker(settings, graph, crawler) for _ in range(2)]
    try:
        records = [new_request(p, full=True) for p in world.page_ids]
        submit(settings, *records)
        views = wait_done(settings, [r.crawl_id for r in records], timeout=240)
        assert all(v.status == "done" for v in views), [v.last_error for v in views]
        app = world.app_calls
        assert app.throttled == 0, f"{app.throttled} calls refused by the app budget"
        assert all(c.throttled == 0 for c in world.calls.values())
        assert app.served > 3 * 60, "the crawls did not need the budget's refill"
        slowed = sum(w.worker.app_limiter.counts.slowed for w in workers)
        assert slowed > 0
        # both workers crawled (the pages were shared between them)
        assert all(w.worker.app_limiter.counts.calls > 0 for w in workers)
    finally:
        for w in workers:
            w.stop()
