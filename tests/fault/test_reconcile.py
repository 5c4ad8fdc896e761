"""Reconciliation: webhooks Meta never delivered come back by the periodic crawl, unasked.

Gateway, crawler and materializer run as processes (the fault suite's Pipeline) against
the fake Graph API. Every new message is added to the fake's threads and sent by
webhook; Meta drops 10 % of them for good on two pages and every one on the third. No
one asks for a crawl: the crawler's reconciler (CONVSYNC_RECONCILE_EVERY, short here)
does, and Postgres must equal the truth again within one period of the last webhook.
The third page, whose webhooks are silent while crawls find its new messages, is
flagged (status endpoint, metric, one log line); the two others are not.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from convsync.db import connect
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import FakeMessage, GraphWorld
from deploy.simulator.webhooks import Dropper, WebhookSender, page_body
from tests.fault.harness import (
    SECRET,
    Body,
    Load,
    Pipeline,
    Truth,
    check,
    wait_caught_up,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PERIOD = 20.0
JITTER = 0.1
# The crawl of a few new messages and the materializer storing them, on a shared machine.
SLACK = 15.0
MESSAGES = 150


def world_truth(world: GraphWorld) -> Truth:
    truth = Truth()
    for page in world.page_ids:
        truth.messages |= {tuple(r) for r in world.expected(page)["messages"]}  # type: ignore[misc]
    return truth


def wait_equal(settings: Settings, world: GraphWorld, timeout: float) -> float:
    """Wait until Postgres equals the fake's truth; return the seconds it took."""
    began = time.monotonic()
    while True:
        result = check(settings, world_truth(world))
        if result.ok:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(
                f"Postgres does not equal the truth after {timeout:.0f}s: {result}"
            )
        time.sleep(0.5)


def add_message(pipe: Pipeline, thread_id: str, text: str) -> FakeMessage:
    """Add a message to the fake on its own loop (a crawl may be reading the thread)."""
    assert pipe.graph is not None
    world = pipe.graph.server.world

    async def add() -> FakeMessage:
        return world.add_message(thread_id, text=text)

    return asyncio.run_coroutine_threadsafe(add(), pipe.graph.loop).result(10)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local test URL
        return json.loads(resp.read())


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local test URL
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_reconciliation_fills_dropped_webhooks_and_flags_a_silent_page(
    shared: Settings, scenario_logs: Path
) -> None:
    began = time.monotonic()
    rng = random.Random(25)
    world = GraphWorld.generate(seed=25, pages=3, conversations=30, max_messages=4)
    pages = world.page_ids
    silent_page = pages[2]
    metrics = free_ports()
    env = {
        "CONVSYNC_RECONCILE_EVERY": str(PERIOD),
        "CONVSYNC_RECONCILE_JITTER": str(JITTER),
        "CONVSYNC_RECONCILE_TICK": "1",
        "CONVSYNC_CRAWLER_METRICS_ADDR": f"127.0.0.1:{metrics}",
    }
    settings = shared.model_copy(update={"page_tokens": {}})
    with Pipeline(settings, scenario_logs, world=world, extra_env=env) as pipe:
        pipe.start("gateway", "crawler-1", "materializer")
        # 1. nobody asks: each page's first turn (within one period) backfills it
        first = wait_equal(settings, world, PERIOD * (1 + JITTER) + SLACK)

        # 2. new messages, each sent by webhook; Meta drops 10 % (all of the third page's)
        sender = WebhookSender(SECRET, seed=25)
        lossy, lost = Dropper(0.10, seed=25), Dropper(1.0)
        bodies: list[Body] = []
        for i in range(MESSAGES):
            page = pages[i % len(pages)]
            conv = rng.choice([c for c in world.conversations[page] if c.psid])
            assert conv.psid is not None
            msg = add_message(pipe, conv.thread_id, f"new {i} ✓")
            item = sender.message(page, conv.psid, text=msg.text, mid=msg.mid, ts=msg.created_ms)
            signed = sender.sign(page_body([(page, [item], [])], time=sender.now()))
            body = Body(signed, 1, ((page, conv.psid, msg.mid, msg.text, "inbound"),), ())
            if (lost if page == silent_page else lossy).keep(msg.mid):
                bodies.append(body)
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=50)
        load.run_blocking(120)
        sent = time.monotonic()
        assert load.gave_up == 0 and len(load.accepted) == len(bodies)

        # 3. within one period of the last webhook Postgres equals the truth again
        refill = wait_equal(settings, world, PERIOD * (1 + JITTER) + SLACK)
        wait_caught_up(settings, pipe.group, timeout=60)
        after = time.monotonic() - sent
        final = check(settings, world_truth(world))
        # the reconciler's next ticks see the flag already set: it is logged only once
        time.sleep(3)
        status = get_json(f"http://127.0.0.1:{metrics}/status")
        figures = scrape(f"http://127.0.0.1:{metrics}/metrics")
        health = get_json(f"http://127.0.0.1:{metrics}/healthz")

    schema = sql.Identifier(settings.db_schema)
    dropped = [*lossy.dropped, *lost.dropped]
    with connect(settings) as conn:
        sources = dict(
            conn.execute(
                sql.SQL("SELECT mid, source FROM {}.events WHERE mid = ANY(%s)").format(schema),
                (dropped,),
            ).fetchall()
        )
        crawls = conn.execute(
            sql.SQL("SELECT page_id, count(*) FROM {}.crawl_history GROUP BY page_id").format(
                schema
            )
        ).fetchall()
    log = (scenario_logs / "crawler-1.log").read_text(errors="replace")
    flagged = {p for p, s in status["pages"].items() if s["silent_since"] is not None}
    print(
        f"\nfirst backfill {first:.1f}s; {len(lossy.dropped)} + {len(lost.dropped)} of "
        f"{MESSAGES} webhooks dropped; Postgres equal again {refill:.1f}s after the last "
        f"webhook (period {PERIOD:.0f}s); crawls per page {dict(crawls)}"
    )
    write_result(
        14,
        "Reconciliation: webhooks Meta never delivered",
        done=(
            f"Gateway, one crawler worker and the materializer as processes; nobody asks for "
            f"a crawl. {MESSAGES} new messages are added to the fake Graph API's threads and "
            "sent by webhook; Meta drops 10 % of them on two pages and every one on the "
            "third. The crawler's reconciler (one incremental crawl per page per period) "
            "must bring Postgres back to the truth within one period of the last webhook, "
            "and flag the silent page once."
        ),
        scale=f"3 pages x 30 conversations, period {PERIOD:.0f} s (jitter {JITTER:.0%})",
        figures={
            "webhooks dropped (lossy pages)": len(lossy.dropped),
            "webhooks dropped (silent page)": len(lost.dropped),
            "dropped messages stored from a crawl": len(sources),
            "first backfill, unasked (s)": round(first, 1),
            "Postgres equal again after the last webhook (s)": round(after, 1),
            "silent pages flagged": sorted(flagged),
            "lost (missing)": final.missing,
            "duplicates": final.duplicates,
            "postgres equals truth": final.ok,
        },
        seconds=time.monotonic() - began,
    )
    assert lossy.dropped, "the seed dropped nothing: the test would prove nothing"
    # every dropped message came back, by the crawler
    assert set(sources) == set(dropped) and set(sources.values()) == {"crawler"}
    assert after <= PERIOD * (1 + JITTER) + SLACK
    # the silent page is flagged, once; the lossy ones are not
    assert flagged == {silent_page}
    assert figures["convsync_crawler_pages_silent"] == 1
    assert log.count(f"page {silent_page}: no webhook") == 1
    assert figures["convsync_crawler_reconcile_requests_total"] >= 2 * len(pages)
    states = ("queued", "running", "done", "failed")
    assert sum(figures[f'convsync_crawler_crawls{{state="{s}"}}'] for s in states) == len(pages)
    assert figures['convsync_crawler_crawls{state="failed"}'] == 0
    assert health["ok"] is True
