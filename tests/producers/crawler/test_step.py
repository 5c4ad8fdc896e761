"""Crawl steps against the fake Graph API without Kafka: one call per step, every message."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from deploy.simulator.graph_api import Faults, GraphApiServer, GraphWorld, token_for
from producers.crawler.config import CrawlerSettings
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import GraphClient
from producers.crawler.request import new_request
from producers.crawler.step import FetchStats, run_step
from producers.crawler.urls import GraphOrigin
from schemas.crawl import CrawlRequest
from schemas.envelope import Envelope


async def crawl_all(
    world: GraphWorld, record: CrawlRequest, *, conversations_cap: int = 25, messages_cap: int = 25
) -> tuple[list[Envelope], CrawlRequest, int]:
    server = GraphApiServer(world, conversations_cap=conversations_cap, messages_cap=messages_cap)
    await server.start()
    envelopes: list[Envelope] = []
    steps = 0
    try:
        async with aiohttp.ClientSession() as session:
            client = GraphClient(session, server.base_url)
            settings = CrawlerSettings(calls_per_second=1000, backoff_base=0.01)
            fetch = PageFetcher(
                client, page_id=record.page_id, token=token_for(record.page_id), settings=settings
            )
            while True:
                calls_before = sum(c.calls for c in world.calls.values())
                out = await run_step(
                    record,
                    fetch=fetch,
                    origin=client.origin,
                    conversations_limit=10,
                    messages_limit=10,
                )
                # one Graph page per step (no fault is on, so one call)
                assert sum(c.calls for c in world.calls.values()) - calls_before == 1
                steps += 1
                envelopes.extend(out.envelopes)
                record = record.model_copy(update={"seq": record.seq + 1, "step": out.step})
                if out.done:
                    return envelopes, record, steps
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_short_pages_never_end_the_crawl() -> None:
    world = GraphWorld.generate(
        seed=8,
        conversations=25,
        long_threads=2,
        long_thread_messages=33,
        no_user=1,
        faults=Faults(short_pages=True, details_limit=20),
    )
    page = world.page_ids[0]
    envelopes, last, steps = await crawl_all(
        world, new_request(page, full=True), conversations_cap=10, messages_cap=10
    )
    rows = {(e.page_id, e.psid, e.mid, e.text, e.direction) for e in envelopes}
    truth = world.expected(page)
    assert rows == {tuple(r) for r in truth["messages"]}
    assert len(envelopes) == len(rows)  # no message read twice
    assert last.step is not None
    c = last.step.counters
    assert c.messages == len(rows) and c.api_calls == steps
    assert c.conversations_done == c.conversations_listed == truth["conversations"]
    assert c.skipped == truth["skipped"]
    assert c.messages_without_details == sum(1 for r in rows if r[4] is None) > 0


@pytest.mark.asyncio
async def test_incremental_reads_only_what_is_newer() -> None:
    world = GraphWorld.generate(seed=12, conversations=30)
    page = world.page_ids[0]
    convs = world.conversations[page]
    old_thread, older_thread = convs[10].thread_id, convs[20].thread_id
    since = max(c.updated_ms for c in convs) + 1
    new = [
        world.add_message(old_thread, text="again"),
        world.add_message(older_thread, text="and again", from_page=True),
    ]
    record = new_request(page, full=False).model_copy(update={"since": since})
    envelopes, last, steps = await crawl_all(world, record)
    assert {e.mid for e in envelopes} == {m.mid for m in new}
    assert {e.direction for e in envelopes} == {"inbound", "outbound"}
    # one conversations page, one messages page per updated thread
    assert steps == 3
    assert last.step is not None and last.step.counters.conversations_done == 2


@pytest.mark.asyncio
async def test_a_message_nested_too_deep_is_skipped_with_its_reason() -> None:
    # Graph data is Meta's, but a message nested past ~254 levels could not be written
    # as an envelope: until 2026-12-02 its step built one anyway, the produce raised, and
    # the worker stopped on it again after every restart.
    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {"leaf": 1}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    def message(mid: str, levels: int) -> dict[str, Any]:
        return {
            "id": mid,
            "created_time": "2026-11-28T12:34:56+0000",
            "from": {"id": "u1"},
            "message": mid,
            "attachments": {"data": [nested(levels - 3)]},  # message > attachments > data
        }

    pages: list[dict[str, Any]] = [
        {"data": [{"id": "t_1", "updated_time": "2026-11-28T12:34:56+0000",
                   "participants": {"data": [{"id": "p1"}, {"id": "u1"}]}}]},
        {"data": [message("m_ok", 100), message("m_deep", 300), message("m_101", 101)]},
    ]  # fmt: skip

    async def fetch(_url: str) -> tuple[dict[str, Any], FetchStats]:
        return pages.pop(0), FetchStats(api_calls=1)

    record = new_request("p1", full=True)
    envelopes: list[Envelope] = []
    while True:
        out = await run_step(
            record,
            fetch=fetch,
            origin=GraphOrigin("https://graph.facebook.com/v21.0"),
            conversations_limit=10,
            messages_limit=10,
        )
        envelopes.extend(out.envelopes)
        record = record.model_copy(update={"seq": record.seq + 1, "step": out.step})
        if out.done:
            break
    assert [e.mid for e in envelopes] == ["m_ok"]
    assert Envelope.from_bytes(envelopes[0].to_bytes()) == envelopes[0]
    assert record.step is not None
    assert record.step.counters.skipped == {"too_deep": 2}
