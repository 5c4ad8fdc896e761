"""Reconciliation: the schedule, the requests it makes, and the silence flag."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from convsync.settings import Settings
from producers.crawler import silence
from producers.crawler.reconcile import (
    Reconciler,
    ReconcileSettings,
    Schedule,
    configured_pages,
    parse_duration,
)
from producers.crawler.request import new_request, submit
from producers.crawler.state import make_pool, record_queued
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

PERIOD = 600.0


def test_durations_read_with_or_without_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_duration("6h") == 21600 and parse_duration("30m") == 1800
    assert parse_duration("90") == 90 and parse_duration(" 2.5 s ") == 2.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("six hours")
    monkeypatch.setenv("CONVSYNC_RECONCILE_EVERY", "6h")
    options = ReconcileSettings()
    assert options.every == 21600 and options.tick_seconds == 30
    assert options.window_seconds == 2 * 21600
    assert ReconcileSettings().jitter == 0.1


def test_first_turns_are_spread_across_the_period_and_state_follows_the_pages() -> None:
    schedule = Schedule(PERIOD, 0.1, rng=random.Random(1))
    pages = [str(100000 + i) for i in range(2000)]
    schedule.sync(pages, now=0.0)
    tenths = [0] * 10
    for at in schedule.due.values():
        assert 0 <= at < PERIOD
        tenths[int(at / PERIOD * 10)] += 1
    # no tenth of the period holds more than twice its share (nothing bunched at start)
    assert max(tenths) < 2 * len(pages) / 10 and min(tenths) > len(pages) / 20
    # the same page falls at the same place after a restart (up to the jitter)
    again = Schedule(PERIOD, 0.1, rng=random.Random(2))
    again.sync(pages[:1], now=0.0)
    apart = abs(again.due[pages[0]] - schedule.due[pages[0]])
    assert min(apart, PERIOD - apart) <= 0.1 * PERIOD
    # bounded: a page that is gone is forgotten
    schedule.sync(pages[:10], now=1.0)
    assert sorted(schedule.due) == pages[:10]


def test_due_pages_come_most_overdue_first_and_turns_are_jittered() -> None:
    schedule = Schedule(PERIOD, 0.1, rng=random.Random(3))
    schedule.due = {"a": 30.0, "b": 10.0, "c": 20.0, "d": 1000.0}
    assert schedule.take(now=100.0, limit=2) == ["b", "c"]
    turns = []
    for _ in range(200):
        schedule.next_turn("a", since=100.0)
        turns.append(schedule.due["a"] - 100.0)
    assert 0.9 * PERIOD <= min(turns) < max(turns) <= 1.1 * PERIOD
    schedule.next_turn("unknown", since=0.0)
    assert "unknown" not in schedule.due


def history(settings: Settings) -> list[tuple[str, str]]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT page_id, status FROM {}.crawl_history ORDER BY page_id").format(
                sql.Identifier(settings.db_schema)
            )
        ).fetchall()
    return [(str(p), str(s)) for p, s in rows]


async def reconcilers(settings: Settings, pages: list[str], n: int, clock: Any) -> list[Any]:
    out = []
    for _ in range(n):
        pool = make_pool(settings.database_url.get_secret_value(), size=1)
        await pool.open(wait=True, timeout=10)
        options = ReconcileSettings(every=PERIOD, jitter=0.1)
        tokens = dict.fromkeys(pages, "token")
        out.append(
            Reconciler(settings, options, pages=configured_pages(tokens), pool=pool, clock=clock)
        )
    return out


@pytest.mark.integration
def test_due_pages_are_requested_once_even_by_two_processes_and_a_recent_crawl_counts(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    pages = ["501", "502", "503", "504"]
    now = [time.time()]
    # "504" is crawled by hand a moment before the others' turns: its turn counts from it
    manual = new_request("504", full=False)
    submit(settings, manual.model_copy(update={"requested_at": int((now[0] + PERIOD) * 1000)}))

    async def main() -> tuple[list[str], list[str], list[str]]:
        one, two = await reconcilers(settings, pages, 2, lambda: now[0])
        try:
            assert await one.tick() == []  # first turns lie within the coming period
            now[0] += PERIOD * 1.2
            # both processes find every page due at once
            asked = await asyncio.gather(one.tick(), two.tick())
            # a tick soon after asks for nothing more
            now[0] += 1
            later = await one.tick()
            return asked[0], asked[1], later
        finally:
            await one.pool.close()
            await two.pool.close()

    first, second, later = asyncio.run(main())
    assert sorted(first + second) == ["501", "502", "503"]
    assert later == []
    rows = history(settings)
    assert sorted(p for p, _ in rows) == ["501", "502", "503", "504"]
    assert {s for _, s in rows} == {"queued"}


EVENT = """
INSERT INTO {schema}.events (event_id, page_id, psid, kind, mid, occurred_at, source,
    payload, topic, "partition", "offset")
VALUES (%s, %s, 'u1', %s, %s, now() - make_interval(secs => %s), %s, '{{}}', 't', 0, 0)
"""


@pytest.mark.integration
def test_a_page_without_webhooks_whose_crawls_find_messages_is_flagged_and_said_once(
    make_schema: MakeSchema, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_schema()
    schema = sql.Identifier(settings.db_schema)
    rows = [
        # 601: silent; crawls found two messages of the last minute
        ("e1", "601", "message", "m1", 30, "crawler"),
        ("e2", "601", "message", "m2", 10, "crawler"),
        # 602: one message missed, but webhooks arrive: not silent
        ("e3", "602", "message", "m3", 10, "crawler"),
        ("e4", "602", "message", "m4", 5, "webhook"),
        # 603: an old history backfilled now is not a silence
        ("e5", "603", "message", "m5", 10**7, "crawler"),
    ]
    url = settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        for row in rows:
            conn.execute(sql.SQL(EVENT).format(schema=schema), row)

    async def check() -> dict[str, silence.Silence]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await silence.check(conn, settings.db_schema, ["601", "602", "603"], window=3600)

    caplog.set_level(logging.INFO, logger="producers.crawler.silence")
    first, second = asyncio.run(check()), asyncio.run(check())
    assert set(first) == set(second) == {"601"}
    assert first["601"].crawl_found_messages == 2
    said = [r.getMessage() for r in caplog.records if "flagged silent" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("page 601:")
    # its webhooks come back: the flag is cleared, and that is said once too
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(EVENT).format(schema=schema), ("e6", "601", "read", None, 1, "webhook")
        )
    assert asyncio.run(check()) == {} and asyncio.run(check()) == {}
    cleared = [r for r in caplog.records if "silence flag cleared" in r.getMessage()]
    assert len(cleared) == 1


@pytest.mark.integration
def test_a_page_claimed_by_another_process_meanwhile_is_not_requested_again(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    """The other process holds the page's lock while it records its request: this one
    waits for it, then sees that request and asks for nothing."""
    settings = make_schema(base=make_topics(partitions=3))
    clock = [time.time()]
    now = clock[0] + PERIOD * 1.2
    url = settings.database_url.get_secret_value()

    async def main() -> list[str]:
        (rec,) = await reconcilers(settings, ["701"], 1, lambda: clock[0])
        try:
            await rec.tick()  # its first turn lies within the coming period
            clock[0] = now
            with psycopg.connect(url) as other, other.transaction():
                lock = "convsync-reconcile:701"
                other.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                ticking = asyncio.create_task(rec.tick())
                await asyncio.sleep(0.5)
                assert not ticking.done(), "the tick did not wait for the page's lock"
                request = new_request("701", full=False)
                request = request.model_copy(update={"requested_at": int(now * 1000)})
                record_queued(other, settings.db_schema, request)
            return await ticking
        finally:
            await rec.pool.close()

    assert asyncio.run(main()) == []
    assert history(settings) == [("701", "queued")]


def test_instagram_accounts_to_reconcile_are_read_as_account_to_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVSYNC_RECONCILE_INSTAGRAM", '{"17841400000000001": "601"}')
    assert ReconcileSettings().instagram == {"17841400000000001": "601"}
    monkeypatch.setenv("CONVSYNC_RECONCILE_INSTAGRAM", '{"601": "601"}')
    with pytest.raises(ValueError, match="linked pages"):
        ReconcileSettings()


@pytest.mark.integration
def test_a_linked_instagram_account_is_reconciled_through_its_page(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from schemas.crawl import CrawlRequest

    settings = make_schema(base=make_topics(partitions=3))
    now = [time.time()]
    linked = {"17841400000000001": "601", "17841400000000002": "699"}  # 699: no token

    async def main() -> list[str]:
        pool = make_pool(settings.database_url.get_secret_value(), size=1)
        await pool.open(wait=True, timeout=10)
        options = ReconcileSettings(every=PERIOD, jitter=0.1, instagram=linked)
        pages = configured_pages({"601": "token"})
        one = Reconciler(settings, options, pages=pages, pool=pool, clock=lambda: now[0])
        try:
            assert await one.tick() == []
            now[0] += PERIOD * 1.2
            return sorted(await one.tick())
        finally:
            await pool.close()

    assert asyncio.run(main()) == ["17841400000000001", "601"]
    topic = settings.topic("crawl")
    group = f"t-{time.monotonic_ns()}"
    consumer = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    records: list[CrawlRequest] = []
    deadline = time.monotonic() + 20
    while len(records) < 2 and time.monotonic() < deadline:
        for m in consumer.consume(10, 0.5):
            if m.error() is None:
                records.append(CrawlRequest.from_bytes(m.value()))
    consumer.close()
    by_page = {r.page_id: r for r in records}
    assert by_page["17841400000000001"].via_page == "601"
    assert by_page["17841400000000001"].platform == "instagram"
    assert by_page["601"].platform == "messenger" and by_page["601"].since is None
