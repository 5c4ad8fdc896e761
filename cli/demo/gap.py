"""The demo's gap: webhooks Meta never delivered, filled by reconciliation, unasked.

After the backfill has settled, new messages are written into the simulated Graph API
threads and sent by webhook, but Meta "gives up" on a share of those deliveries: they
never reach the gateway. No one asks for a crawl; the crawler's reconciler
(``CONVSYNC_RECONCILE_EVERY``, short in the demo) crawls each page incrementally and the
missing messages arrive from Graph. The demo waits for them and then compares Postgres
with the truth, which includes every one of them. The Instagram account linked to a page
gets its share of the new messages (``object: instagram`` webhooks) and is reconciled
through that page.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from psycopg import sql

from cli.demo.options import APP_SECRET, DemoOptions, WebhookTally
from cli.demo.traffic import GraphThread, post_until_ok
from convsync.db import connect
from convsync.settings import Settings
from deploy.simulator.graph_api import FakeMessage
from deploy.simulator.webhooks import WebhookSender, page_body


@dataclass
class Gap:
    """The gap the demo opened and how it was filled."""

    messages: int = 0
    missed: list[str] = field(default_factory=list)  # mids whose webhook never came
    inboxes: list[str] = field(default_factory=list)  # the pages and accounts written to
    filled: int = 0  # of ``missed``, stored from a crawl
    seconds: float | None = None  # from the last webhook to the last missed one stored


def open_gap(url: str, graph: GraphThread, opts: DemoOptions, tally: WebhookTally) -> Gap:
    """Add ``opts.gap_messages`` new messages to the simulated threads and deliver the
    webhooks of all but a seeded ``opts.missed_share`` of them (at least one)."""
    world = graph.world
    sender = WebhookSender(APP_SECRET, seed=opts.seed + 1)
    rng = sender.rng
    n = opts.gap_messages
    missed_at = set(rng.sample(range(n), max(1, round(n * opts.missed_share)))) if n else set()
    gap = Gap(messages=n)
    # The pages and the Instagram accounts linked to them (reconciled through the page).
    inboxes = [*world.page_ids, *world.instagram]
    gap.inboxes = inboxes
    for i in range(n):
        page = inboxes[i % len(inboxes)]
        instagram = page in world.instagram
        text = f"after the backfill {i}"

        async def add(page: str = page, text: str = text) -> tuple[str, FakeMessage]:
            # On the fake's own loop: a crawl may be reading these threads right now.
            threads = world.instagram.get(page) or world.conversations[page]
            conv = rng.choice([c for c in threads if c.psid])
            assert conv.psid is not None
            return conv.psid, world.add_message(conv.thread_id, text=text)

        psid, msg = asyncio.run_coroutine_threadsafe(add(), graph.loop).result(10)
        tally.truth.add((page, psid, msg.mid, text, "inbound"))
        if i in missed_at:
            gap.missed.append(msg.mid)
            continue
        item = sender.message(page, psid, text=text, mid=msg.mid, ts=msg.created_ms)
        body = page_body(
            [(page, [item], [])],
            time=sender.now(),
            obj="instagram" if instagram else "page",
        )
        post_until_ok(url, sender.sign(body), tally)
    return gap


def crawled(settings: Settings, pages: list[str], mids: list[str]) -> int:
    """How many of ``mids``, messages of ``pages``, are stored from a crawl (``source =
    'crawler'``). The pages make it a lookup of events_target_idx (page, mid, kind)."""
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(DISTINCT mid) FROM {}.events"
                " WHERE page_id = ANY(%s) AND mid = ANY(%s) AND source = 'crawler'"
            ).format(sql.Identifier(settings.db_schema)),
            (pages, mids),
        ).fetchone()
    return int(str(row[0])) if row else 0


def wait_filled(settings: Settings, gap: Gap, timeout: float) -> bool:
    """Wait until every missed message is stored from a crawl; record how long it took.
    Return False when ``timeout`` passed first."""
    began = time.monotonic()
    while True:
        gap.filled = crawled(settings, gap.inboxes, gap.missed)
        if gap.filled == len(gap.missed):
            gap.seconds = time.monotonic() - began
            return True
        if time.monotonic() - began > timeout:
            return False
        time.sleep(0.5)
