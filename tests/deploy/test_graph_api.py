"""The fake Graph API itself: formats, paging, caps, usage headers, faults, the truth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from yarl import URL

from deploy.simulator.graph_api import Faults, GraphApiServer, GraphWorld, token_for
from deploy.simulator.graph_instagram import instagram_inbox
from producers.crawler.graph import parse_usage
from producers.crawler.parse import GraphConversation, GraphMessage


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[GraphApiServer, aiohttp.ClientSession]]:
    world = GraphWorld.generate(
        seed=1,
        conversations=12,
        long_threads=1,
        long_thread_messages=30,
        no_user=1,
        malformed=1,
    )
    server = GraphApiServer(world, conversations_cap=5, messages_cap=7)
    await server.start()
    async with aiohttp.ClientSession() as session:
        yield server, session
    await server.stop()


async def get(
    session: aiohttp.ClientSession, url: str, page: str
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {token_for(page)}"}
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def walk(session: aiohttp.ClientSession, url: str, page: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        status, body, _ = await get(session, next_url, page)
        assert status == 200, body
        items.extend(body["data"])
        next_url = body.get("paging", {}).get("next")
        if next_url:
            assert URL(next_url).is_absolute()
    return items


def test_generation_is_deterministic() -> None:
    a = GraphWorld.generate(seed=9, conversations=10)
    b = GraphWorld.generate(seed=9, conversations=10)
    c = GraphWorld.generate(seed=10, conversations=10)
    assert a.expected(a.page_ids[0]) == b.expected(b.page_ids[0])
    assert a.conversations[a.page_ids[0]] != c.conversations[c.page_ids[0]]


@pytest.mark.asyncio
async def test_paging_caps_formats_and_truth(
    served: tuple[GraphApiServer, aiohttp.ClientSession],
) -> None:
    server, session = served
    world = server.world
    page = world.page_ids[0]
    url = f"{server.base_url}/{page}/conversations?platform=messenger&limit=100"
    status, first, headers = await get(session, url, page)
    assert status == 200 and len(first["data"]) == 5  # limit capped
    usage = parse_usage(headers)
    assert 0 < usage.percent < 100
    convs = await walk(session, url, page)
    assert len(convs) == 12
    parsed = [GraphConversation.model_validate(c) for c in convs]
    times = [c.updated_time for c in parsed]
    assert times == sorted(times, reverse=True)  # newest updated first
    rows = set()
    skipped: dict[str, int] = {}
    for conv in parsed:
        users = [p.id for p in conv.participants.data if p.id != page]
        if not users:
            skipped["no_user_participant"] = skipped.get("no_user_participant", 0) + 1
            continue
        msgs = await walk(
            session, f"{server.base_url}/{conv.id}/messages?fields=id,message&limit=3", page
        )
        assert len(msgs) == conv.message_count
        for raw in msgs:
            if raw["created_time"] == "not-a-time":
                skipped["invalid_message"] = skipped.get("invalid_message", 0) + 1
                continue
            m = GraphMessage.model_validate(raw)
            assert m.sender is not None
            direction = "outbound" if m.sender.id == page else "inbound"
            rows.add((page, users[0], m.id, m.message or None, direction))
    truth = world.expected(page)
    assert rows == {tuple(r) for r in truth["messages"]}
    assert skipped == truth["skipped"] == {"no_user_participant": 1, "invalid_message": 1}
    status, served_truth, _ = await get(
        session, f"{server.base_url.rsplit('/', 1)[0]}/_expected/{page}", page
    )
    assert status == 200 and served_truth == orjson.loads(orjson.dumps(truth))


@pytest.mark.asyncio
async def test_old_messages_lose_details_and_textless_have_attachments() -> None:
    world = GraphWorld.generate(
        seed=4,
        conversations=3,
        long_threads=1,
        long_thread_messages=26,
        textless_ratio=0.5,
        faults=Faults(details_limit=20),
    )
    server = GraphApiServer(world, messages_cap=100)
    await server.start()
    try:
        page = world.page_ids[0]
        conv = next(c for c in world.conversations[page] if len(c.messages) == 26)
        async with aiohttp.ClientSession() as session:
            msgs = await walk(session, f"{server.base_url}/{conv.thread_id}/messages", page)
    finally:
        await server.stop()
    assert all("from" in m for m in msgs[:20])
    assert all(set(m) == {"id", "created_time"} for m in msgs[20:])
    textless = [m for m in msgs[:20] if not m["message"]]
    assert textless and all(m["attachments"]["data"] for m in textless)


@pytest.mark.asyncio
async def test_faults_auth_throttle_rate_and_5xx() -> None:
    now = [100.0]
    world = GraphWorld.generate(seed=2, conversations=3)
    server = GraphApiServer(world, clock=lambda: now[0])
    await server.start()
    page = world.page_ids[0]
    url = f"{server.base_url}/{page}/conversations?platform=messenger"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == 190
            world.faults.throttle_every = 2
            world.faults.regain_minutes = 0.5
            assert (await get(session, url, page))[0] == 200
            status, body, headers = await get(session, url, page)
            assert status == 400 and body["error"]["code"] in (4, 17, 32, 613, 80006)
            assert parse_usage(headers).regain_seconds == pytest.approx(30)
            now[0] += 10
            status, body, _ = await get(session, url, page)  # still blocked
            assert status == 400 and body["error"]["code"] == 613
            now[0] += 21
            world.faults.throttle_every = 0
            assert (await get(session, url, page))[0] == 200
            world.faults.rate_per_page = 2.0
            codes = [(await get(session, url, page))[0] for _ in range(3)]
            assert codes == [200, 200, 400]  # a bucket of 2 calls
            now[0] += 0.5
            assert (await get(session, url, page))[0] == 200
            world.faults.rate_per_page = None
            world.faults.error_5xx_every = 1
            async with session.get(
                url, headers={"Authorization": f"Bearer {token_for(page)}"}
            ) as resp:
                assert resp.status >= 500
            world.faults.error_5xx_every = 0
            world.faults.permanent_code = 200
            status, body, _ = await get(session, url, page)
            assert status == 400 and body["error"]["code"] == 200
    finally:
        await server.stop()
    assert world.calls[page].throttled >= 3


def test_add_message_moves_the_thread_to_the_top() -> None:
    world = GraphWorld.generate(seed=6, conversations=5)
    page = world.page_ids[0]
    last = world.conversations[page][-1]
    msg = world.add_message(last.thread_id, text="new")
    assert world.conversations[page][0] is last and last.messages[0] is msg


@pytest.mark.asyncio
async def test_a_hostile_next_link_points_elsewhere_from_the_page_asked(
    served: tuple[GraphApiServer, aiohttp.ClientSession],
) -> None:
    server, session = served
    world = server.world
    page = world.page_ids[0]
    evil = "http://198.51.100.7:9/v21.0"
    world.faults.foreign_next = {page: evil}
    world.faults.foreign_next_from = 5
    url = f"{server.base_url}/{page}/conversations?platform=messenger"
    _, first, _ = await get(session, url, page)
    second_url = first["paging"]["next"]
    assert second_url.startswith(f"{server.base_url}/{page}/conversations?")
    _, second, _ = await get(session, second_url, page)
    hostile = URL(second["paging"]["next"])
    assert str(hostile).startswith(f"{evil}/{page}/conversations?")
    assert hostile.query["after"] and hostile.query["platform"] == "messenger"
    # other nodes keep their own links
    thread = next(c for c in world.conversations[page] if len(c.messages) == 30).thread_id
    _, msgs, _ = await get(session, f"{server.base_url}/{thread}/messages", page)
    assert msgs["paging"]["next"].startswith(server.base_url)


@pytest.mark.asyncio
async def test_a_linked_instagram_inbox_is_listed_through_its_page() -> None:
    world = GraphWorld.generate(seed=2, pages=2, conversations=3)
    page, other = world.page_ids
    account = "17841400000000009"
    world.link_instagram(page, account, instagram_inbox(seed=2, account_id=account))
    server = GraphApiServer(world, conversations_cap=4, messages_cap=3)
    base = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            ig = f"{base}/{page}/conversations?platform=instagram&fields=x"
            convs = await walk(session, ig, page)
            assert [c["id"] for c in convs] == [c.thread_id for c in world.instagram[account]]
            for listed in convs:
                people = listed["participants"]["data"]
                assert {p["id"] for p in people} == {
                    account,
                    world.thread(listed["id"]).psid,  # type: ignore[union-attr]
                }
                assert all(set(p) == {"id", "username"} for p in people)
                GraphConversation.model_validate(listed)
            rows = []
            for listed in convs:
                conv = world.thread(listed["id"])
                assert conv is not None and conv.instagram
                for m in await walk(session, f"{base}/{listed['id']}/messages", page):
                    GraphMessage.model_validate(m)
                    if "shares" in m:
                        assert m["message"] == "" and m["shares"]["data"][0]["link"]
                    inbound = m["from"]["id"] != account
                    text = m["message"] or None
                    direction = "inbound" if inbound else "outbound"
                    rows.append([account, conv.psid, m["id"], text, direction])
            assert sorted(rows, key=str) == sorted(world.expected(account)["messages"], key=str)
            # The page's Messenger inbox is unchanged; the account is no node of its own,
            # a page without a linked account has no Instagram inbox, and the messages of
            # an Instagram thread need the linked page's token.
            messenger = await walk(session, f"{base}/{page}/conversations?platform=messenger", page)
            assert [c["id"] for c in messenger] == [c.thread_id for c in world.conversations[page]]
            listing = "conversations?platform=instagram"
            status, _, _ = await get(session, f"{base}/{account}/{listing}", account)
            assert status == 400
            status, body, _ = await get(session, f"{base}/{other}/{listing}", other)
            assert status == 400 and "no linked Instagram" in body["error"]["message"]
            status, body, _ = await get(session, f"{base}/{convs[0]['id']}/messages", other)
            assert status == 400 and body["error"]["code"] == 190
            assert set(world.calls) == {page}  # refused before they count
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_the_user_profile_api_answers_the_fields_asked_and_denies_some(
    served: tuple[GraphApiServer, aiohttp.ClientSession],
) -> None:
    server, session = served
    world = server.world
    page = world.page_ids[0]
    user = next(c.psid for c in world.conversations[page] if c.psid is not None)
    base = server.base_url
    status, body, _ = await get(session, f"{base}/{user}?fields=first_name,last_name", page)
    assert status == 200 and body == {"first_name": "User", "last_name": user, "id": user}
    world.add_profile(page, "123456", name="Ig User", username="ig.user", profile_pic="p")
    status, body, _ = await get(session, f"{base}/123456?fields=name,username", page)
    assert body == {"name": "Ig User", "username": "ig.user", "id": "123456"}
    # another page's token: code 190; an unknown user: code 100; a denied one: code 230
    status, body, _ = await get(session, f"{base}/123456?fields=name", "999")
    assert status == 400 and body["error"]["code"] == 190
    status, body, _ = await get(session, f"{base}/424242?fields=name", page)
    assert body["error"]["code"] == 100
    world.faults.denied_profiles = ["123456"]
    status, body, _ = await get(session, f"{base}/123456?fields=name", page)
    assert status == 400 and body["error"]["code"] == 230
    assert world.profile_calls == {user: 1, "123456": 3, "424242": 1}
