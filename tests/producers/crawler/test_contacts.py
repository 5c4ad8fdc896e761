"""Contacts: names from a crawl's participants, the User Profile API for users seen only
through webhooks, refusals capped, refresh after the maximum age."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.config import CrawlerSettings
from producers.crawler.contacts import ContactStore, participant_contacts
from producers.crawler.graph import GraphClient
from producers.crawler.profiles import ContactSettings, ProfileFetcher, profile_url
from producers.crawler.request import new_request, submit
from producers.crawler.state import make_pool
from producers.crawler.urls import GraphOrigin
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import FakeGraph, fast_crawler, start_worker
from tests.producers.crawler.test_worker import wait_status


def test_participants_give_the_named_users_but_never_the_page() -> None:
    item = {
        "participants": {
            "data": [
                {"id": "123", "name": "Ann Lee"},
                {"id": "999", "name": "The Page"},
                {"id": "456", "username": "ann.ig"},
                {"id": "789"},
                {"id": "../x", "name": "odd"},
                "junk",
            ]
        }
    }
    got = participant_contacts(item, "999", platform="instagram")
    assert [(c.psid, c.name, c.username, c.platform) for c in got] == [
        ("123", "Ann Lee", None, "instagram"),
        ("456", None, "ann.ig", "instagram"),
    ]
    assert participant_contacts({"participants": "x"}, "999") == []
    assert participant_contacts(None, "999") == []


def test_profile_urls_ask_the_platform_fields_and_take_only_graph_ids() -> None:
    origin = GraphOrigin("https://graph.facebook.com/v21.0")
    assert profile_url(origin, "123", "messenger") == (
        "https://graph.facebook.com/v21.0/123?fields=first_name,last_name,profile_pic"
    )
    assert profile_url(origin, "123", "instagram").endswith("fields=name,username,profile_pic")
    with pytest.raises(ValueError, match="not a Graph id"):
        profile_url(origin, "user_ref:../../x", "messenger")


def contacts(settings: Settings) -> dict[str, dict[str, Any]]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        cur = conn.execute(
            sql.SQL("SELECT * FROM {}.contacts").format(sql.Identifier(settings.db_schema))
        )
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return {row[1]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def execute(settings: Settings, text: str, *params: Any) -> None:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        conn.execute(sql.SQL(text).format(s=sql.Identifier(settings.db_schema)), params)


def add_conversation(settings: Settings, page: str, psid: str, platform: str = "messenger") -> None:
    """A conversation as the materializer writes it for a webhook-only user."""
    execute(
        settings,
        "INSERT INTO {s}.conversations (page_id, psid, platform, message_count,"
        " last_message_at) VALUES (%s, %s, %s, 1, now())",
        page,
        psid,
        platform,
    )


@pytest.mark.integration
def test_a_crawl_names_its_users_from_the_participants(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Callable[..., FakeGraph]
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=11, conversations=12, no_user=1)
    graph = fake_graph(world, conversations_cap=5)
    page = world.page_ids[0]
    running = start_worker(settings, graph)
    try:
        record = new_request(page, full=True)
        submit(settings, record)
        view = wait_status(settings, record.crawl_id, {"done", "failed"})
        assert view.status == "done", view.last_error
    finally:
        running.stop()
    users = {c.psid for c in world.conversations[page] if c.psid is not None}
    got = contacts(settings)
    assert set(got) == users  # the page itself is no contact
    for psid, row in got.items():
        assert (row["page_id"], row["name"]) == (page, f"User {psid}")
        assert row["source"] == "participants"
        assert row["fetched_at"] is not None and row["error"] is None
    # the crawl made no profile call: every user it listed has a name
    assert world.profile_calls == {}


class Profiles:
    """A ProfileFetcher on its own loop against a fake Graph API."""

    def __init__(self, settings: Settings, graph: FakeGraph, options: ContactSettings) -> None:
        self.settings, self.graph, self.options = settings, graph, options

    async def tokens(self) -> dict[str, str]:
        """The fake's page tokens, as the pages table's source gives them."""
        return {p: t.get_secret_value() for p, t in self.graph.tokens().items()}

    def tick(self, times: int = 1, *, while_held: bool = False) -> ProfileFetcher:
        """Run ``times`` ticks of a new fetcher (``while_held``: while another process's
        fetcher holds the turn)."""

        async def main() -> ProfileFetcher:
            pool = make_pool(self.settings.database_url.get_secret_value(), size=2)
            await pool.open(wait=True, timeout=10)
            try:
                async with aiohttp.ClientSession() as session:
                    fetcher = ProfileFetcher(
                        self.options,
                        fast_crawler(max_attempts=2),
                        client=GraphClient(session, self.graph.url),
                        store=ContactStore(pool, self.settings.db_schema),
                        tokens=self.tokens,
                    )
                    other = make_pool(self.settings.database_url.get_secret_value(), size=1)
                    await other.open(wait=True, timeout=10)
                    async with ContactStore(other, self.settings.db_schema).turn() as got:
                        assert got
                        if while_held:
                            for _ in range(times):
                                await fetcher.tick()
                    await other.close()
                    if not while_held:
                        for _ in range(times):
                            await fetcher.tick()
                    return fetcher
            finally:
                await pool.close()

        return asyncio.run(main())


FAST = {"calls_per_second": 1000.0, "backoff": 0.0, "tick": 1.0}


@pytest.mark.integration
def test_webhook_only_users_get_their_profile_and_refusals_stop_at_the_cap(
    make_schema: MakeSchema, fake_graph: Callable[..., FakeGraph]
) -> None:
    settings = make_schema()
    world = GraphWorld.generate(seed=12, conversations=2)
    graph = fake_graph(world)
    page = world.page_ids[0]
    world.add_profile(
        page, "5550001", first_name="Ada", last_name="Byron", profile_pic="https://cdn/ada.jpg"
    )
    world.add_profile(page, "5550002", first_name="Denied", last_name="User")
    world.add_profile(page, "5550003", name="Ig Person", username="ig.person")
    world.faults.denied_profiles = ["5550002"]
    add_conversation(settings, page, "5550001")
    add_conversation(settings, page, "5550002")
    add_conversation(settings, page, "5550003", platform="instagram")
    # a guest without a PSID and a page unknown to the tokens are never asked about
    add_conversation(settings, page, "user_ref:abc")
    add_conversation(settings, "777", "5550004")
    profiles = Profiles(settings, graph, ContactSettings(max_attempts=3, **FAST))

    # one fetcher at a time: while another process's holds the turn, nothing is asked
    fetcher = profiles.tick(times=2, while_held=True)
    assert fetcher.figures.turns_skipped == 2 and world.profile_calls == {}
    fetcher = profiles.tick(times=5)
    got = contacts(settings)
    assert set(got) == {"5550001", "5550002", "5550003"}
    ada = got["5550001"]
    assert (ada["name"], ada["first_name"], ada["last_name"], ada["profile_pic"]) == (
        "Ada Byron",
        "Ada",
        "Byron",
        "https://cdn/ada.jpg",
    )
    assert (ada["source"], ada["error"], ada["attempts"]) == ("profile_api", None, 0)
    ig = got["5550003"]
    assert (ig["platform"], ig["name"], ig["username"]) == ("instagram", "Ig Person", "ig.person")
    # the refused user: recorded, asked max_attempts times in all, never again
    denied = got["5550002"]
    assert denied["name"] is None and denied["fetched_at"] is None
    assert "230" in denied["error"] and denied["attempts"] == 3
    assert world.profile_calls == {"5550001": 1, "5550002": 3, "5550003": 1}
    assert (fetcher.figures.fetched, fetcher.figures.refused) == (2, 3)
    profiles.tick(times=2)
    assert world.profile_calls["5550002"] == 3


@pytest.mark.integration
def test_backoff_spaces_refusals_and_contacts_are_refreshed_after_the_max_age(
    make_schema: MakeSchema, fake_graph: Callable[..., FakeGraph]
) -> None:
    settings = make_schema()
    world = GraphWorld.generate(seed=13, conversations=1)
    graph = fake_graph(world)
    page = world.page_ids[0]
    world.add_profile(page, "6660001", first_name="Old", last_name="Name")
    world.add_profile(page, "6660002", first_name="No", last_name="Way")
    world.faults.denied_profiles = ["6660002"]
    add_conversation(settings, page, "6660001")
    add_conversation(settings, page, "6660002")
    options = ContactSettings(max_age="1h", max_attempts=5, **{**FAST, "backoff": "10m"})
    profiles = Profiles(settings, graph, options)
    profiles.tick(times=3)
    # fresh contacts are not asked again; a refusal waits for its backoff
    assert world.profile_calls == {"6660001": 1, "6660002": 1}
    assert contacts(settings)["6660001"]["name"] == "Old Name"
    # an hour on: the contact is stale, the refusal's backoff (10 min) has passed
    world.add_profile(page, "6660001", first_name="New", last_name="Name")
    execute(
        settings,
        "UPDATE {s}.contacts SET fetched_at = fetched_at - interval '61 minutes',"
        " error_at = error_at - interval '11 minutes'",
    )
    fetcher = profiles.tick()
    assert world.profile_calls == {"6660001": 2, "6660002": 2}
    assert (fetcher.figures.fetched, fetcher.figures.refused) == (1, 1)
    got = contacts(settings)
    assert got["6660001"]["name"] == "New Name" and got["6660002"]["attempts"] == 2
    # the second refusal waits twice as long (20 min): 11 minutes on is too early
    execute(settings, "UPDATE {s}.contacts SET error_at = error_at - interval '11 minutes'")
    profiles.tick()
    assert world.profile_calls["6660002"] == 2


@pytest.mark.integration
def test_a_refused_token_stops_the_pages_turn_and_records_nothing(
    make_schema: MakeSchema, fake_graph: Callable[..., FakeGraph]
) -> None:
    settings = make_schema()
    world = GraphWorld.generate(seed=14, conversations=1)
    graph = fake_graph(world)
    page = world.page_ids[0]
    for i in range(3):
        world.add_profile("another-page", f"888000{i}", first_name="X")
        add_conversation(settings, page, f"888000{i}")
    fetcher = Profiles(settings, graph, ContactSettings(**FAST)).tick()
    # code 190 (the token is not the user's page's): about the page, not the users
    assert contacts(settings) == {}
    assert fetcher.figures.page_failures == 1
    assert sum(world.profile_calls.values()) == 1


@pytest.mark.integration
def test_participants_keep_what_the_profile_api_added(
    make_schema: MakeSchema, fake_graph: Callable[..., FakeGraph]
) -> None:
    settings = make_schema()
    world = GraphWorld.generate(seed=15, conversations=1)
    graph = fake_graph(world)
    page = world.page_ids[0]
    world.add_profile(page, "7770001", first_name="Pic", last_name="Owner", profile_pic="u")
    add_conversation(settings, page, "7770001")
    Profiles(settings, graph, ContactSettings(**FAST)).tick()

    async def crawl_names() -> None:
        pool = make_pool(settings.database_url.get_secret_value(), size=1)
        await pool.open(wait=True, timeout=10)
        try:
            store = ContactStore(pool, settings.db_schema)
            item = {"participants": {"data": [{"id": "7770001", "name": "Pic Renamed"}]}}
            await store.from_participants(participant_contacts(item, page))
            await store.from_participants(participant_contacts(item, page))  # a step again
        finally:
            await pool.close()

    asyncio.run(crawl_names())
    row = contacts(settings)["7770001"]
    assert (row["name"], row["first_name"], row["profile_pic"]) == ("Pic Renamed", "Pic", "u")
    assert row["source"] == "profile_api"


def test_settings_read_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSYNC_CONTACT_MAX_AGE", "7d")
    monkeypatch.setenv("CONVSYNC_CONTACT_TICK", "30s")
    options = ContactSettings()
    assert (options.max_age, options.tick, options.max_attempts) == (604800, 30, 3)
    assert CrawlerSettings().request_timeout > 0
