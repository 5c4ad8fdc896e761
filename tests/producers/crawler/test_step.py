"""Crawl steps against the fake Graph API without Kafka: one call per step, every message."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from convsync.errors import RetryableError
from deploy.simulator.graph_api import Faults, GraphApiServer, GraphWorld, token_for
from producers.crawler.config import CrawlerSettings
from producers.crawler.exceptions import CrawlFailedError
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import GraphClient
from producers.crawler.request import new_request
from producers.crawler.step import FetchStats, record_refusal, run_step
from producers.crawler.urls import GraphOrigin
from schemas.crawl import ConversationTodo, CrawlRequest, CrawlStep
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
                client,
                page_id=record.graph_page,
                token=token_for(record.graph_page),
                settings=settings,
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


G = "https://graph.facebook.com/v21.0"
GRAPH = GraphOrigin(G)
EVIL = "https://evil.example/v21.0"
LOCAL = "http://127.0.0.1:1/v21.0"
CONVERSATION = {
    "id": "t_1",
    "updated_time": "2026-11-28T12:34:56+0000",
    "participants": {"data": [{"id": "p1"}, {"id": "u1"}]},
}


async def one_step(record: CrawlRequest, body: dict[str, Any]) -> tuple[Any, list[str]]:
    """Run one step of ``record`` against a canned Graph ``body``; return it and the URLs."""
    fetched: list[str] = []

    async def fetch(url: str) -> tuple[dict[str, Any], FetchStats]:
        fetched.append(url)
        return body, FetchStats(api_calls=1)

    out = await run_step(
        record, fetch=fetch, origin=GRAPH, conversations_limit=10, messages_limit=10
    )
    return out, fetched


def listed(page: str = "p1") -> CrawlRequest:
    """A crawl of ``page`` standing at its first conversation's messages."""
    todo = ConversationTodo(thread_id="t_1", psid="u1", updated_at=1)
    step = CrawlStep(conversations_exhausted=True, queue=(todo,), started_at=1)
    return new_request(page, full=True).model_copy(update={"seq": 2, "step": step})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("record", "edge"),
    [(new_request("p1", full=True), "conversations"), (listed(), "messages")],
)
@pytest.mark.parametrize(
    "nxt",
    [
        "https://evil.example/v21.0/{node}/{edge}?after=x",
        "https://graph.facebook.com@evil.example/v21.0/{node}/{edge}?after=x",
        "https://graph.facebook.com/v2.0/{node}/{edge}?after=x",
        "https://graph.facebook.com/v21.0/other/{edge}?after=x",
        "",
        5,
    ],
)
async def test_a_next_page_a_token_may_not_go_to_fails_the_crawl(
    record: CrawlRequest, edge: str, nxt: Any
) -> None:
    # Until this was fixed, such a link was fetched with the token, or read as "no next
    # page": the crawl then reported done with only the pages before it.
    node = "p1" if edge == "conversations" else "t_1"
    if isinstance(nxt, str):
        nxt = nxt.format(node=node, edge=edge)
    body = {"data": [CONVERSATION], "paging": {"next": nxt}}
    with pytest.raises(CrawlFailedError, match=r"paging\.next that is refused"):
        await one_step(record, body)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("record", "edge"), [(new_request("p1", full=True), "conversations"), (listed(), "messages")]
)
async def test_a_next_page_equal_to_the_page_just_read_fails_the_crawl(
    record: CrawlRequest, edge: str
) -> None:
    node = "p1" if edge == "conversations" else "t_1"
    url = f"https://graph.facebook.com/v21.0/{node}/{edge}?after=abc"
    step = record.step or CrawlStep(started_at=1)
    here = {"conversations_url": url} if edge == "conversations" else {"messages_url": url}
    record = record.model_copy(update={"step": step.model_copy(update=here)})
    body = {"data": [], "paging": {"next": url + "&access_token=T"}}
    with pytest.raises(CrawlFailedError, match="names the page just read"):
        await one_step(record, body)


@pytest.mark.asyncio
@pytest.mark.parametrize("paging", [[], "x", 3])
async def test_a_malformed_paging_is_a_bad_response_not_the_end(paging: Any) -> None:
    with pytest.raises(RetryableError, match="paging"):
        await one_step(new_request("p1", full=True), {"data": [], "paging": paging})


@pytest.mark.asyncio
async def test_the_next_page_is_stored_without_token_or_proof() -> None:
    nxt = (
        "https://graph.facebook.com/v21.0/p1/conversations?access_token=T&after=a&appsecret_proof=P"
    )
    out, fetched = await one_step(
        new_request("p1", full=True), {"data": [CONVERSATION], "paging": {"next": nxt}}
    )
    assert out.step.conversations_url == "https://graph.facebook.com/v21.0/p1/conversations?after=a"
    assert fetched[0].startswith("https://graph.facebook.com/v21.0/p1/conversations?")
    assert not out.done and out.step.queue[0].thread_id == "t_1"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"page_id": "../me"}, "page id"),
        ({"page_id": "p1?x"}, "page id"),
        ({"step": {"conversations_url": f"{EVIL}/p1/conversations"}}, "conversations_url"),
        ({"step": {"conversations_url": f"{G}/p2/conversations"}}, "conversations_url"),
        ({"step": {"messages_url": f"{G}/t_1/messages"}}, "no queued"),
        ({"queue": ["t_1", "../../me/feed"]}, "queue holds"),
        ({"queue": ["t_1"], "step": {"messages_url": f"{LOCAL}/t_1/messages"}}, "messages_url"),
        ({"queue": ["t_1"], "step": {"messages_url": f"{G}/t_2/messages"}}, "messages_url"),
    ],
)  # fmt: skip
async def test_a_record_pointing_elsewhere_is_refused_before_any_request(
    change: dict[str, Any], why: str
) -> None:
    step: dict[str, Any] = {"started_at": 1, **change.get("step", {})}
    if "queue" in change:
        step["queue"] = [
            ConversationTodo(thread_id=t, psid="u1", updated_at=1) for t in change["queue"]
        ]
        step["conversations_exhausted"] = True
    record = new_request(change.get("page_id", "p1"), full=True).model_copy(
        update={"seq": 1, "step": CrawlStep(**step)}
    )
    reason = record_refusal(record, GRAPH)
    assert reason is not None and why in reason, reason
    fetched: list[str] = []

    async def fetch(url: str) -> tuple[dict[str, Any], FetchStats]:
        fetched.append(url)
        return {"data": []}, FetchStats(api_calls=1)

    with pytest.raises(CrawlFailedError, match="crawl record refused"):
        await run_step(record, fetch=fetch, origin=GRAPH, conversations_limit=1, messages_limit=1)
    assert fetched == []


@pytest.mark.asyncio
async def test_ids_from_a_response_are_checked_before_they_go_in_a_path() -> None:
    def conv(thread: str, user: str) -> dict[str, Any]:
        return {
            **CONVERSATION,
            "id": thread,
            "participants": {"data": [{"id": "p1"}, {"id": user}]},
        }

    items = [
        conv("t_ok", "u1"),
        conv("../../me/accounts", "u2"),
        conv("t_1?x=", "u3"),
        conv("t_1/messages", "u4"),
        conv("%2e%2e", "u5"),
        conv("t_2", "u6/../x"),
        conv("t_3", "u" * 65),
    ]
    out, _ = await one_step(new_request("p1", full=True), {"data": items})
    assert [t.thread_id for t in out.step.queue] == ["t_ok"]
    assert out.step.counters.skipped == {"invalid_thread_id": 4, "invalid_user_id": 2}
