"""The fake media CDN: deterministic bytes per URL, each behaviour, and the fakes of
Meta (webhook sender, Graph API) putting its URLs into messages."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.media import (
    FLAKY_FAILURES,
    SLOW_BYTES,
    MediaServer,
    expected_outcome,
    media_bytes,
)
from deploy.simulator.webhooks import WebhookSender
from producers.crawler.parse import message_envelope
from schemas.crawl import ConversationTodo

HUGE = 300_000


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[MediaServer, aiohttp.ClientSession]]:
    server = MediaServer(huge_bytes=HUGE)
    await server.start()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield server, session
    await server.stop()


async def get(
    session: aiohttp.ClientSession, url: str
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with session.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp


@pytest.mark.asyncio
async def test_files_are_the_same_bytes_every_time(
    served: tuple[MediaServer, aiohttp.ClientSession],
) -> None:
    server, session = served
    for name in ("ok-1.jpg", "slow-2.bin", "same-4-a.jpg"):
        status, first, _ = await get(session, server.url(name))
        _, again, _ = await get(session, server.url(name))
        assert status == 200
        assert first == again == media_bytes(name)
        sha = hashlib.sha256(first).hexdigest()
        assert expected_outcome(server.url(name), max_bytes=HUGE) == ("stored", sha)
    assert len(media_bytes("slow-2.bin")) == SLOW_BYTES
    assert media_bytes("ok-1.jpg") != media_bytes("ok-2.jpg")
    assert media_bytes("same-4-a.jpg") == media_bytes("same-4-b.png") != media_bytes("same-5-a")
    assert server.requests["/media/ok-1.jpg"] == 2


@pytest.mark.asyncio
async def test_errors_and_limits(served: tuple[MediaServer, aiohttp.ClientSession]) -> None:
    server, session = served
    assert (await get(session, server.url("missing-1.jpg")))[0] == 404
    status, body, _ = await get(session, server.url("expired-1.jpg"))
    assert (status, body) == (403, b"URL signature expired")
    flaky = [(await get(session, server.url("flaky-1.jpg")))[0] for _ in range(FLAKY_FAILURES + 1)]
    assert flaky == [503] * FLAKY_FAILURES + [200]
    status, body, resp = await get(session, server.url("huge-1.mp4"))
    assert (status, len(body), resp.content_length) == (200, HUGE, HUGE)
    status, body, resp = await get(session, server.url("hugechunked-1.mp4"))
    assert (status, len(body), resp.content_length) == (200, HUGE, None)
    status, _, resp = await get(session, server.url("redirect-1") + "&to=http://elsewhere/x")
    assert (status, resp.headers["Location"]) == (302, "http://elsewhere/x")
    for name, reason in (("missing-1", "not_found"), ("expired-1", "forbidden")):
        assert expected_outcome(server.url(name), max_bytes=HUGE) == ("failed", reason)
    assert expected_outcome(server.url("huge-1"), max_bytes=HUGE) == ("failed", "too_large")
    async with session.get(server.base_url + "/_requests") as resp:
        counts = await resp.json()
    assert counts["/media/flaky-1.jpg"] == FLAKY_FAILURES + 1


def test_the_webhook_sender_points_attachments_at_the_media_server() -> None:
    plain = WebhookSender("s", seed=1).batch(["1"], items_per_page=100, kinds=["message"])
    again = WebhookSender("s", seed=1, media_base=None).batch(
        ["1"], items_per_page=100, kinds=["message"]
    )
    assert plain.raw == again.raw
    assert b"fbcdn.net" in plain.raw
    sender = WebhookSender("s", seed=1, media_base="http://127.0.0.1:9")
    urls = [sender.media_attachment()["payload"]["url"] for _ in range(200)]
    assert all(u.startswith("http://127.0.0.1:9/media/") for u in urls)
    behaviours = {u.rsplit("/", 1)[1].split("-", 1)[0] for u in urls}
    assert behaviours >= {"ok", "same", "slow", "flaky", "missing", "expired", "huge"}
    body = sender.batch(["1"], items_per_page=200, kinds=["message"]).body
    attached = [
        i["message"]["attachments"]
        for i in body["entry"][0]["messaging"]
        if "attachments" in i["message"]
    ]
    assert attached
    assert all(a[0]["payload"]["url"].startswith("http://127.0.0.1:9/") for a in attached)


def test_the_fake_graph_api_gives_attachments_urls_on_the_media_server() -> None:
    world = GraphWorld.generate(seed=2, conversations=30, textless_ratio=0.6)
    plain = [
        world.message_json(c, i)
        for c in world.conversations[world.page_ids[0]]
        for i in range(len(c.messages))
    ]
    assert all("url" not in str(m.get("attachments", "")) for m in plain)
    world.media_base = "http://127.0.0.1:9"
    kinds = set()
    for conv in world.conversations[world.page_ids[0]]:
        todo = ConversationTodo(thread_id=conv.thread_id, psid=conv.psid or "0", updated_at=0)
        for i, m in enumerate(conv.messages):
            if m.text is not None:
                continue
            env = message_envelope(world.message_json(conv, i), page_id=conv.page_id, todo=todo)
            assert not isinstance(env, str)
            (att,) = env.attrs["attachments"]
            kinds |= {k for k in ("image_data", "video_data", "file_url") if k in att}
            url = att.get("file_url") or (att.get("image_data") or att.get("video_data"))["url"]
            assert url.startswith("http://127.0.0.1:9/media/")
    assert kinds == {"image_data", "video_data", "file_url"}
