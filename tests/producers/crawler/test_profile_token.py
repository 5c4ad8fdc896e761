"""A token Graph refuses to the profile fetcher: the page needs a reconnect, said once,
and is not asked about again until a new token is set."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import pytest

from convsync.pages import TokenCipher
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.contacts import ContactStore
from producers.crawler.graph import GraphClient
from producers.crawler.profiles import ContactSettings, ProfileFetcher
from producers.crawler.state import make_pool
from producers.crawler.tokens import table_rejecter, table_tokens
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import FakeGraph, fast_crawler
from tests.producers.crawler.test_contacts import FAST, add_conversation, contacts
from tests.producers.crawler.test_token_pause import page_row, put_token

pytestmark = pytest.mark.integration


def test_an_expired_token_sends_the_page_to_needs_reconnect_once(
    make_schema: MakeSchema,
    fake_graph: Callable[..., FakeGraph],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="producers.crawler.profiles")
    settings = make_schema()
    world = GraphWorld.generate(seed=15, conversations=1)
    graph = fake_graph(world)
    page = world.page_ids[0]
    put_token(settings, page, graph.server.token(page))
    for i in range(3):
        world.add_user(page, f"999000{i}")
        add_conversation(settings, page, f"999000{i}")
    graph.call(_expire(graph, page))
    cipher = TokenCipher(settings.secret_key)

    async def ticks(n: int) -> ProfileFetcher:
        pool = make_pool(settings.database_url.get_secret_value(), size=2)
        await pool.open(wait=True, timeout=10)
        try:
            async with aiohttp.ClientSession() as session:
                fetcher = ProfileFetcher(
                    ContactSettings(**FAST),
                    fast_crawler(max_attempts=2),
                    client=GraphClient(session, graph.url),
                    store=ContactStore(pool, settings.db_schema),
                    tokens=table_tokens(pool, settings.db_schema, cipher),
                    rejected=table_rejecter(pool, settings.db_schema, cipher),
                )
                for _ in range(n):
                    await fetcher.tick()
                return fetcher
        finally:
            await pool.close()

    fetcher = asyncio.run(ticks(3))
    row = page_row(settings, page)
    assert row["status"] == "needs_reconnect"
    assert row["status_message"] == "the token expired: reconnect the page"
    # one call refused, then the page is left out: no loop of calls or warnings
    assert sum(world.profile_calls.values()) == 1
    assert fetcher.figures.page_failures == 1
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "reconnect the page" in warned[0].getMessage()
    assert contacts(settings) == {}

    # a new token (API or CLI) and the users are named on the next tick
    graph.server.rotate_token(page, "a-new-token-for-the-page")
    put_token(settings, page, "a-new-token-for-the-page")
    asyncio.run(ticks(1))
    assert page_row(settings, page)["status"] == "active"
    assert {u: c["name"] for u, c in contacts(settings).items()} == {
        f"999000{i}": f"User 999000{i}" for i in range(3)
    }


async def _expire(graph: FakeGraph, page: str) -> None:
    graph.server.expire_token(page)
