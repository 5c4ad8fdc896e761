"""A sync request Kafka did not confirm: answered 503, leaves no crawl for later ones to join."""

from __future__ import annotations

import asyncio

import pytest
import requests

from convsync.db import connect
from producers.crawler.request import _withdraw, new_request
from producers.crawler.state import CrawlStateStore, Progress, make_pool, record_queued
from tests.admin.conftest import TOKEN, AdminEnv, ServerThread, kafka_unreachable
from tests.consumers.helpers import scalar
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

_HISTORY = "SELECT count(*) FROM {s}.crawl_history WHERE page_id = %s"
_STATUS = "SELECT status FROM {s}.crawl_history WHERE crawl_id = %s"


def test_sync_not_confirmed_by_kafka_leaves_nothing_to_join(admin_env: AdminEnv) -> None:
    # The same schema and topics, but a gateway whose Kafka is unreachable.
    down = ServerThread(kafka_unreachable(admin_env.settings))
    try:
        r = requests.post(
            down.url + "/admin/pages/123/sync",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
    finally:
        down.stop()
    assert r.status_code == 503, r.text
    # Kafka reachable again: a new crawl is requested (not the one that was never produced).
    r = admin_env.post("/pages/123/sync")
    assert r.status_code == 202, r.text
    assert r.json()["joined"] is False and r.json()["status"] == "queued"
    assert admin_env.crawl_records() == 1
    assert scalar(admin_env.settings, _STATUS, r.json()["crawl_id"]) == "queued"
    assert scalar(admin_env.settings, _HISTORY, "123") == 1


def test_withdrawal_keeps_a_row_the_crawler_moved_on(make_schema: MakeSchema) -> None:
    # A record whose confirmation timed out may still have landed and been picked up by
    # the crawler before the withdrawal: its row is then the crawler's and stays.
    settings = make_schema()
    moved, untouched = new_request("p1", full=False), new_request("p2", full=False)
    with connect(settings) as conn:
        record_queued(conn, settings.db_schema, moved)
        record_queued(conn, settings.db_schema, untouched)

    async def crawler_starts() -> None:
        async with make_pool(settings.database_url.get_secret_value(), size=1) as pool:
            store = CrawlStateStore(pool, settings.db_schema)
            await store.project(Progress(moved, "running", None, 1))

    asyncio.run(crawler_starts())
    _withdraw(settings, [moved.crawl_id, untouched.crawl_id])
    assert scalar(settings, _STATUS, moved.crawl_id) == "running"
    assert scalar(settings, _STATUS, untouched.crawl_id) is None
