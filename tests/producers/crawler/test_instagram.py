"""Instagram conversations crawled through the linked page: listing, ids, resumption, attrs.

An Instagram professional account is crawled as ``page_id`` = the account id (its
webhooks' ``entry.id``) with ``via_page`` = its linked Facebook Page: Graph lists the
account's conversations at ``/{page}/conversations?platform=instagram`` with the page's
token. The bodies below are written from Meta's Conversations API documentation
(participants and senders with ``username``; ``shares``, ``sticker``, ``tags``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphWorld
from deploy.simulator.graph_instagram import instagram_inbox
from deploy.simulator.instagram import InstagramTraffic
from deploy.simulator.webhooks import WebhookSender
from producers.crawler.exceptions import CrawlFailedError
from producers.crawler.parse import conversation_todo, message_envelope
from producers.crawler.request import new_request, submit
from producers.crawler.step import MESSAGE_FIELDS, platform_refusal, record_refusal, run_step
from producers.crawler.urls import GraphOrigin
from producers.webhook.mapping import map_body, map_item
from producers.webhook.payload import parse_body
from schemas.copies import merged_rows
from schemas.crawl import ConversationTodo, CrawlRequest, CrawlStep
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import (
    as_rows,
    expected_rows,
    fast_crawler,
    read_events,
    start_worker,
)
from tests.producers.crawler.test_step import crawl_all
from tests.producers.crawler.test_worker import crawl_state, wait_status

ACCOUNT = "17841400000000042"


def linked_world(seed: int, *, conversations: int = 12, ig: int = 15, **kw: Any) -> GraphWorld:
    """A world of one page whose linked Instagram account has ``ig`` conversations."""
    world = GraphWorld.generate(seed=seed, conversations=conversations, **kw)
    inbox = instagram_inbox(seed=seed, account_id=ACCOUNT, conversations=ig, max_messages=6)
    world.link_instagram(world.page_ids[0], ACCOUNT, inbox)
    return world


TODO = ConversationTodo(thread_id="aWdfZAG06abc", psid="6001002003004005", updated_at=0)


# -- requests --------------------------------------------------------------------------


def test_an_instagram_request_names_the_account_and_its_linked_page() -> None:
    record = new_request(ACCOUNT, full=True, via_page="100701")
    assert (record.page_id, record.platform, record.graph_page) == (ACCOUNT, "instagram", "100701")
    assert new_request("100701", full=True).graph_page == "100701"
    with pytest.raises(ValidationError, match="via_page"):
        CrawlRequest(crawl_id="0" * 12, page_id=ACCOUNT, platform="instagram", requested_at=0)
    with pytest.raises(ValidationError, match="instagram crawls only"):
        CrawlRequest(crawl_id="0" * 12, page_id="1", via_page="2", requested_at=0)
    with pytest.raises(ValidationError, match="not the Instagram account"):
        new_request(ACCOUNT, full=True, via_page=ACCOUNT)
    # Old records (no platform, no via_page) still read as Messenger crawls, and a
    # Messenger record is written as before (workers of before refuse unknown fields).
    old = b'{"schema_version":1,"crawl_id":"000000000000","page_id":"1","requested_at":0}'
    assert CrawlRequest.from_bytes(old).platform == "messenger"
    messenger = new_request("100701", full=True)
    assert b"platform" not in messenger.to_bytes() and b"via_page" not in messenger.to_bytes()
    assert CrawlRequest.from_bytes(messenger.to_bytes()) == messenger
    assert CrawlRequest.from_bytes(record.to_bytes()) == record


def test_a_stored_cursor_of_the_other_inbox_is_refused() -> None:
    origin = GraphOrigin("http://127.0.0.1:1/v21.0")
    record = new_request(ACCOUNT, full=True, via_page="100701")

    def at(url: str) -> CrawlRequest:
        return record.model_copy(update={"step": CrawlStep(conversations_url=url, started_at=0)})

    ig = "http://127.0.0.1:1/v21.0/100701/conversations?platform=instagram&after=QQ"
    assert record_refusal(at(ig), origin) is None
    for url in (
        ig.replace("instagram", "messenger"),
        "http://127.0.0.1:1/v21.0/100701/conversations?after=QQ",
        ig + "&platform=instagram",
        # the account's own node: its conversations are listed by the page
        ig.replace("100701", ACCOUNT),
    ):
        assert record_refusal(at(url), origin) is not None, url
    assert platform_refusal(ig, "instagram") is None
    bad = new_request(ACCOUNT, full=True, via_page="100701").model_copy(update={"via_page": "../x"})
    assert "linked page" in (record_refusal(bad, origin) or "")


# -- parsing ---------------------------------------------------------------------------


def test_the_user_is_the_participant_that_is_neither_the_account_nor_the_page() -> None:
    listed = {
        "id": "aWdfZAG06abc",
        "updated_time": "2026-11-28T12:00:00+0000",
        "participants": {
            "data": [
                {"username": "shop.account", "id": ACCOUNT},
                {"username": "a.customer", "id": "6001002003004005"},
            ]
        },
    }
    todo = conversation_todo(listed, ACCOUNT, also_not="100701")
    assert isinstance(todo, ConversationTodo) and todo.psid == "6001002003004005"
    only_business = {**listed, "participants": {"data": [{"username": "s", "id": ACCOUNT}]}}
    assert conversation_todo(only_business, ACCOUNT, also_not="100701") == "no_user_participant"
    page_listed = {**listed, "participants": {"data": [{"name": "Page", "id": "100701"}]}}
    assert conversation_todo(page_listed, ACCOUNT, also_not="100701") == "no_user_participant"


def test_an_instagram_message_with_usernames_is_read_with_its_direction() -> None:
    base = {"id": "aWdfZAG1faXRlbTox", "created_time": "2026-11-28T12:00:00+0000"}
    inbound = {
        **base,
        "from": {"username": "a.customer", "id": TODO.psid},
        "to": {"data": [{"username": "shop.account", "id": ACCOUNT}]},
        "message": "is this in stock?",
    }
    env = message_envelope(inbound, page_id=ACCOUNT, todo=TODO, platform="instagram")
    assert not isinstance(env, str)
    assert (env.platform, env.page_id, env.psid, env.direction) == (
        "instagram",
        ACCOUNT,
        TODO.psid,
        "inbound",
    )
    outbound = {**inbound, "from": {"username": "shop.account", "id": ACCOUNT}}
    env = message_envelope(outbound, page_id=ACCOUNT, todo=TODO, platform="instagram")
    assert not isinstance(env, str) and env.direction == "outbound"
    # A username that is not text is no Graph shape: pydantic decides, and refuses it.
    odd = {**inbound, "from": {"username": 7, "id": TODO.psid}}
    assert message_envelope(odd, page_id=ACCOUNT, todo=TODO) == "invalid_message"


def test_shares_sticker_and_tags_are_asked_for_and_kept_in_attrs() -> None:
    assert {"shares", "sticker", "tags"} <= set(MESSAGE_FIELDS.split(","))
    base = {
        "id": "m_1",
        "created_time": "2026-11-28T12:00:00+0000",
        "from": {"id": TODO.psid, "name": "A"},
        "message": "",
    }
    shared = {
        **base,
        "shares": {
            "data": [
                {
                    "link": "https://lookaside.example/post.jpg",
                    "name": "A post",
                    "description": None,
                    "odd": 1,
                }
            ]
        },
        "tags": {"data": [{"name": "inbox"}, {"name": "source:mobile"}, {"x": 1}]},
    }
    env = message_envelope(shared, page_id="100701", todo=TODO)
    assert not isinstance(env, str)
    assert env.text is None
    assert env.attrs["shares"] == [{"link": "https://lookaside.example/post.jpg", "name": "A post"}]
    assert env.attrs["tags"] == ["inbox", "source:mobile"]
    sticker = {**base, "sticker": "https://scontent.example/sticker.png"}
    env = message_envelope(sticker, page_id="100701", todo=TODO)
    assert not isinstance(env, str) and env.attrs["sticker"] == sticker["sticker"]
    # Shapes Graph does not send are left in raw only, never an error.
    odd = {**base, "shares": "x", "sticker": {"url": 1}, "tags": [3]}
    env = message_envelope(odd, page_id="100701", todo=TODO)
    assert not isinstance(env, str)
    assert not {"shares", "sticker", "tags"} & env.attrs.keys() and env.raw["shares"] == "x"


# -- crawling through the fake Graph API -----------------------------------------------


@pytest.mark.asyncio
async def test_the_account_is_listed_through_its_page_and_equals_the_fake() -> None:
    world = linked_world(21, ig=23, faults=Faults(details_limit=4))
    page = world.page_ids[0]
    record = new_request(ACCOUNT, full=True, via_page=page)
    envelopes, last, _ = await crawl_all(world, record, conversations_cap=10, messages_cap=3)
    assert as_rows(envelopes) == expected_rows(world, ACCOUNT)
    assert len(envelopes) == len(as_rows(envelopes))
    assert {(e.platform, e.page_id, e.source) for e in envelopes} == {
        ("instagram", ACCOUNT, "crawler")
    }
    assert {e.psid for e in envelopes} == {c.psid for c in world.instagram[ACCOUNT]}
    assert all(e.thread_id and e.thread_id.startswith("aWdf") for e in envelopes)
    # Every call went to the page, with its token: the account is no node of its own.
    assert set(world.calls) == {page}
    assert last.step is not None
    assert last.step.counters.conversations_listed == 23
    assert last.step.counters.messages_without_details == sum(
        1 for r in world.expected(ACCOUNT)["messages"] if r[4] is None
    )
    # A shared post (no text) is not an empty message.
    shared = [e for e in envelopes if e.attrs.get("details") and e.text is None]
    assert shared and all(e.attrs["shares"][0]["link"].endswith(".jpg") for e in shared)


@pytest.mark.asyncio
async def test_a_paging_next_of_the_other_inbox_fails_the_crawl() -> None:
    world = linked_world(22, ig=5)
    page = world.page_ids[0]
    record = new_request(ACCOUNT, full=True, via_page=page)
    body = {
        "data": [],
        "paging": {"next": f"http://127.0.0.1:1/v21.0/{page}/conversations?platform=messenger"},
    }

    async def fetch(url: str) -> tuple[dict[str, Any], Any]:
        from producers.crawler.step import FetchStats

        assert "platform=instagram" in url
        return body, FetchStats()

    with pytest.raises(CrawlFailedError, match="platform"):
        await run_step(
            record,
            fetch=fetch,
            origin=GraphOrigin("http://127.0.0.1:1/v21.0"),
            conversations_limit=10,
            messages_limit=10,
        )


def test_a_crawled_message_and_its_webhook_copy_are_one_event() -> None:
    world = linked_world(23, ig=6)
    sender = WebhookSender("secret", seed=1)
    crawled, webhook = [], []
    for conv in world.instagram[ACCOUNT]:
        assert conv.psid is not None
        todo = ConversationTodo(thread_id=conv.thread_id, psid=conv.psid, updated_at=0)
        for i, m in enumerate(conv.messages):
            env = message_envelope(
                world.message_json(conv, i), page_id=ACCOUNT, todo=todo, platform="instagram"
            )
            assert not isinstance(env, str)
            crawled.append(env)
            if m.text is None:
                continue
            # Meta's webhook copy: the account is entry.id, millisecond time, no thread.
            if m.from_page:
                item = sender.echo(ACCOUNT, conv.psid, text=m.text, mid=m.mid)
            else:
                item = sender.message(ACCOUNT, conv.psid, text=m.text, mid=m.mid)
            item["timestamp"] = m.created_ms + 123
            webhook.append(map_item(ACCOUNT, None, item, "messaging", "instagram"))
    by_mid = {e.mid: e for e in crawled}
    assert webhook
    for hook in webhook:
        assert hook.platform == "instagram"
        assert hook.event_id == by_mid[hook.mid].event_id
    # The copies merge into one row per message: the webhook's time, the crawl's thread.
    rows = merged_rows([*crawled, *webhook])
    assert len(rows) == len(crawled)
    for hook in webhook:
        row = rows[(hook.event_id, hook.psid)].fields()
        assert row["occurred_at"] == hook.occurred_at
        assert row["thread_id"] == by_mid[hook.mid].thread_id
        assert row["text"] == hook.text


def test_the_simulated_webhooks_redeliver_crawled_messages_as_the_same_events() -> None:
    world = linked_world(26, ig=10)
    traffic = InstagramTraffic(WebhookSender("s", seed=4), ACCOUNT, known=world.instagram[ACCOUNT])
    crawled = {}
    for conv in world.instagram[ACCOUNT]:
        assert conv.psid is not None
        todo = ConversationTodo(thread_id=conv.thread_id, psid=conv.psid, updated_at=0)
        for i in range(len(conv.messages)):
            env = message_envelope(
                world.message_json(conv, i), page_id=ACCOUNT, todo=todo, platform="instagram"
            )
            assert not isinstance(env, str)
            crawled[env.mid] = env
    again = 0
    for n in range(200):
        body = traffic.body(n)
        for env in map_body(parse_body(body.signed.raw)):
            if env.kind == "message" and env.mid in crawled:
                again += 1
                assert env.event_id == crawled[env.mid].event_id
                assert (env.psid, env.text, env.direction) == (
                    crawled[env.mid].psid,
                    crawled[env.mid].text,
                    crawled[env.mid].direction,
                )
    assert again > 5


# -- the worker, real Kafka and Postgres ------------------------------------------------


@pytest.fixture
def settings(make_topics: MakeTopics, make_schema: MakeSchema) -> Settings:
    return make_schema(base=make_topics(partitions=3))


@pytest.mark.integration
def test_the_worker_backfills_the_account_next_to_its_page(
    settings: Settings, fake_graph: Any
) -> None:
    world = linked_world(
        24,
        conversations=15,
        ig=30,
        faults=Faults(details_limit=5, error_5xx_every=7, throttle_every=11, regain_minutes=0.002),
    )
    page = world.page_ids[0]
    graph = fake_graph(world, conversations_cap=8, messages_cap=4)
    running = start_worker(settings, graph)
    try:
        messenger = new_request(page, full=True)
        instagram = new_request(ACCOUNT, full=True, via_page=page)
        submit(settings, messenger, instagram)
        views = [
            wait_status(settings, r.crawl_id, {"done", "failed"}) for r in (messenger, instagram)
        ]
        want = expected_rows(world, page) | expected_rows(world, ACCOUNT)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        running.stop()
    # Two crawls, neither absorbing the other: the account's state is its own.
    assert [v.status for v in views] == ["done", "done"], [v.last_error for v in views]
    assert as_rows(events) == want
    assert {e.platform for e in events if e.page_id == ACCOUNT} == {"instagram"}
    assert {e.platform for e in events if e.page_id == page} == {"messenger"}
    state = crawl_state(settings, ACCOUNT)
    truth = world.expected(ACCOUNT)
    assert state["crawl_id"] == instagram.crawl_id and state["status"] == "done"
    assert state["messages_fetched"] == len(truth["messages"])
    assert state["conversations_fetched"] == truth["conversations"]
    assert state["retries"] > 0 and state["throttle_waits"] > 0
    assert crawl_state(settings, page)["crawl_id"] == messenger.crawl_id


@pytest.mark.integration
def test_an_instagram_crawl_resumes_on_another_worker_and_then_goes_incremental(
    settings: Settings, fake_graph: Any
) -> None:
    world = linked_world(25, ig=40)
    page = world.page_ids[0]
    graph = fake_graph(world, conversations_cap=10, messages_cap=3)
    first = start_worker(settings, graph, fast_crawler(calls_per_second=20.0))
    record = new_request(ACCOUNT, full=True, via_page=page)
    second = None
    try:
        submit(settings, record)
        deadline = time.monotonic() + 60
        while sum(c.calls for c in world.calls.values()) < 15:
            assert time.monotonic() < deadline, "the crawl never started"
            time.sleep(0.02)
        first.stop()  # mid-crawl: the next owner resumes from the last step
        steps_before = first.worker.stats.steps
        second = start_worker(settings, graph, fast_crawler())
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
        assert steps_before > 0 and second.worker.stats.steps > 0
        # Resumed, not restarted: about one call per step, none read twice but the one
        # in flight at the stop.
        full_calls = sum(c.calls for c in world.calls.values())
        assert full_calls <= view.api_calls + 1
        convs = world.instagram[ACCOUNT]
        new = [
            world.add_message(convs[3].thread_id, text="later"),
            world.add_message(convs[20].thread_id, text="later too", from_page=True),
        ]
        again = new_request(ACCOUNT, full=False, via_page=page)
        submit(settings, again)
        inc = wait_status(settings, again.crawl_id, {"done", "failed"})
        want = expected_rows(world, ACCOUNT)
        events = read_events(settings, until=lambda evs: len(as_rows(evs)) >= len(want))
    finally:
        if second is not None:
            second.stop()
    assert inc.status == "done" and inc.messages == 2
    assert as_rows(events) == want
    later = {e.mid: e for e in events if e.text in ("later", "later too")}
    assert set(later) == {m.mid for m in new}
    assert {e.platform for e in events} == {"instagram"}
    assert crawl_state(settings, ACCOUNT)["since_watermark"] is not None
