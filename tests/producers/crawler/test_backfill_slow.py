"""A large page (faults on) backfilled through Kafka into Postgres, with webhook events for
the same conversations arriving during the crawl.

The issue's 10,000 conversations (the default; ``CONVSYNC_TEST_BIG_PAGE`` sets another
size): one page, so ~10,100 serial steps of ~11 ms here (a Graph call and two
acknowledged produces); the crawl takes about 110 s on the 2-core machine.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from psycopg import sql

from consumers.materializer import Materializer
from convsync.db import connect
from convsync.kafka import make_producer
from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.request import new_request, submit
from producers.webhook.mapping import map_item
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import (
    BIG_PAGE,
    as_rows,
    big_world,
    expected_rows,
    fast_crawler,
    read_events,
    start_worker,
)
from tests.producers.crawler.test_worker import crawl_state, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def webhook_echoes(world: GraphWorld, page: str, every: int) -> list[Any]:
    """Webhook envelopes (via the gateway's mapping) for messages the crawl also reads."""
    out = []
    for conv in world.conversations[page][::every]:
        if conv.psid is None:
            continue
        for i, m in enumerate(conv.messages):
            if m.malformed or not world.detailed(i):
                continue
            user, me = {"id": conv.psid}, {"id": page}
            message: dict[str, Any] = {"mid": m.mid, "text": m.text or ""}
            if m.from_page:
                message["is_echo"] = True
            item = {
                "sender": me if m.from_page else user,
                "recipient": user if m.from_page else me,
                "timestamp": m.created_ms,
                "message": message,
            }
            out.append(map_item(page, m.created_ms, item, "messaging"))
    return out


def test_big_page_backfill_with_webhook_traffic(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    settings: Settings = make_schema(base=make_topics(partitions=3))
    world = big_world(31)
    graph = fake_graph(world, conversations_cap=100, messages_cap=25)
    page = world.page_ids[0]
    webhook = webhook_echoes(world, page, every=50)
    running = start_worker(
        settings, graph, fast_crawler(conversations_limit=100, messages_limit=25)
    )
    started = time.monotonic()
    try:
        record = new_request(page, full=True)
        submit(settings, record)

        def send_webhooks() -> None:
            producer = make_producer(settings)
            for env in webhook:
                producer.produce(settings.topic("events"), key=page.encode(), value=env.to_bytes())
                producer.poll(0)
                time.sleep(0.001)
            assert producer.flush(30) == 0

        sender = threading.Thread(target=send_webhooks)
        sender.start()
        view = wait_status(settings, record.crawl_id, {"done", "failed"}, timeout=600)
        sender.join(60)
    finally:
        running.stop()
    crawl_seconds = time.monotonic() - started
    assert view.status == "done", view.last_error
    want = expected_rows(world, page)
    events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    crawler_events = [e for e in events if e.source == "crawler"]
    assert as_rows(crawler_events) == want
    state = crawl_state(settings, page)
    assert state["skipped_reasons"] == world.expected(page)["skipped"]
    assert state["throttle_waits"] >= 1 and state["retries"] >= 1

    # The materializer projects both sources into Postgres: one row per message.
    Materializer.from_settings(settings, group=f"mat-{time.monotonic_ns()}").run_to_end()
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, mid, text, direction, source FROM {}.events"
                " WHERE kind = 'message'"
            ).format(sql.Identifier(settings.db_schema))
        ).fetchall()
    mids = [r[2] for r in rows]
    assert len(mids) == len(set(mids)) == len(want)
    webhook_mids = {e.mid for e in webhook}
    assert webhook_mids <= set(mids)
    # Postgres holds the same facts; rows first written by the webhook keep its text
    # ("" for attachments) but name the same (page, psid, mid, direction).
    assert {(r[0], r[1], r[2], r[4]) for r in rows if r[2] not in webhook_mids} == {
        (w[0], w[1], w[2], w[4]) for w in want if w[2] not in webhook_mids
    }
    assert {(r[0], r[1], r[2], r[4]) for r in rows} == {(w[0], w[1], w[2], w[4]) for w in want}
    print(f"\n{BIG_PAGE} conversations, {len(want)} messages: crawl {crawl_seconds:.1f}s")
