"""The demo's traffic: the fake Graph API in a thread and signed webhooks to the gateway."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from cli.demo.options import APP_SECRET, DemoOptions, WebhookTally
from convsync.errors import ConvsyncError
from deploy.simulator.graph_api import GraphApiServer, GraphWorld
from deploy.simulator.instagram import InstagramTraffic
from deploy.simulator.media import MediaServer
from deploy.simulator.webhooks import WebhookSender, page_body, post
from producers.webhook.fields import user_ref_key


class GraphThread:
    """The fake Graph API served from a background thread with its own event loop."""

    def __init__(self, world: GraphWorld, *, media: bool = False) -> None:
        self.world = world
        self.server = GraphApiServer(world)
        self.media = MediaServer() if media else None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> str:
        """Serve the Graph API (and, with ``media``, the fake CDN its attachments point
        at); return the Graph API's URL."""
        self.thread.start()
        if self.media is not None:
            fut = asyncio.run_coroutine_threadsafe(self.media.start(), self.loop)
            self.world.media_base = fut.result(timeout=30)
        fut = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        self.url = fut.result(timeout=30)
        return self.url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        if self.media is not None:
            asyncio.run_coroutine_threadsafe(self.media.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def send_webhooks(url: str, world: GraphWorld, opts: DemoOptions, tally: WebhookTally) -> None:
    """Post signed webhook bodies for the simulated pages at about ``webhook_rate``/s.

    Mixes new messages from known and new users and from chat-plugin guests (a
    ``user_ref``, no PSID: a conversation of its own each), page echoes, re-deliveries of messages
    the crawler also sees (same mids), Meta-style retries of whole bodies, and reads;
    every fifth body is one Instagram account's (messages, story replies, echoes,
    unsends, reactions, messaging_seen, and re-deliveries of messages the crawler reads
    through the account's linked page). Every body is retried until the gateway answers
    200, like Meta does.
    """
    sender = WebhookSender(APP_SECRET, seed=opts.seed)
    account = next(iter(world.instagram), None)
    if account is None:
        instagram = InstagramTraffic(sender)
    else:
        instagram = InstagramTraffic(sender, account, known=world.instagram[account])
    rng = sender.rng
    pages = world.page_ids
    known = {p: [c for c in world.conversations[p] if c.psid] for p in pages}
    new_users = {p: [sender.psid() for _ in range(20)] for p in pages}
    # Meta's User Profile API knows the users who write only through webhooks too.
    for p, users in new_users.items():
        for user in users:
            world.add_user(p, user)
    if account is not None:
        for user in instagram.user_ids:
            world.add_user(account, user)
    interval = 1.0 / opts.webhook_rate
    last_body = None
    try:
        for n in range(opts.webhook_bodies):
            if n % 5 == 4:
                ig = instagram.body(n)
                tally.truth.update(ig.messages)
                tally.instagram_messages += len(ig.messages)
                for key, mark in ig.reads.items():
                    tally.read_watermarks[key] = max(tally.read_watermarks.get(key, 0), mark)
                post_until_ok(url, ig.signed, tally)
                time.sleep(interval)
                continue
            page = pages[n % len(pages)]
            items: list[dict[str, Any]] = []
            roll = rng.random()
            if roll < 0.35:  # a new message from a known user
                conv = rng.choice(known[page])
                assert conv.psid is not None
                text = f"webhook {n}"
                item = sender.message(page, conv.psid, text=text)
                tally.truth.add((page, conv.psid, item["message"]["mid"], text, "inbound"))
                items.append(item)
            elif roll < 0.50:  # a new user writes
                psid = rng.choice(new_users[page])
                text = f"new user {n}"
                item = sender.message(page, psid, text=text)
                tally.truth.add((page, psid, item["message"]["mid"], text, "inbound"))
                items.append(item)
            elif roll < 0.55:  # a chat-plugin guest, known by a user_ref only
                ref = f"guest-{page}-{rng.randrange(5)}"
                guest = user_ref_key(ref)
                assert guest is not None
                text = f"guest {n}"
                item = sender.message(page, "0", text=text)
                item["sender"] = {"user_ref": ref}
                tally.truth.add((page, guest, item["message"]["mid"], text, "inbound"))
                tally.guests.add((page, guest))
                items.append(item)
            elif roll < 0.70:  # the page answers (an echo)
                conv = rng.choice(known[page])
                assert conv.psid is not None
                item = sender.echo(page, conv.psid, text=f"reply {n}")
                tally.truth.add((page, conv.psid, item["message"]["mid"], f"reply {n}", "outbound"))
                items.append(item)
            elif roll < 0.85:  # a message the crawler also sees: same mid, same fact
                conv = rng.choice(known[page])
                assert conv.psid is not None
                msg = conv.messages[0]
                if msg.text and not msg.malformed:
                    route = (page, conv.psid) if msg.from_page else (conv.psid, page)
                    body: dict[str, Any] = {"mid": msg.mid, "text": msg.text}
                    if msg.from_page:
                        body["is_echo"] = True
                    items.append(
                        {
                            "sender": {"id": route[0]},
                            "recipient": {"id": route[1]},
                            "timestamp": msg.created_ms,
                            "message": body,
                        }
                    )
            else:  # the user read the conversation
                conv = rng.choice(known[page])
                assert conv.psid is not None
                item = sender.read(page, conv.psid)
                key = (page, conv.psid)
                mark = int(item["read"]["watermark"])
                tally.read_watermarks[key] = max(tally.read_watermarks.get(key, 0), mark)
                items.append(item)
            if not items:
                continue
            signed = sender.sign(page_body([(page, items, [])], time=sender.now()))
            if last_body is not None and rng.random() < 0.1:
                post_until_ok(url, last_body, tally)  # Meta re-delivers a body it sent
            post_until_ok(url, signed, tally)
            last_body = signed
            time.sleep(interval)
    except Exception as e:  # noqa: BLE001 - the demo reports the failure in its summary
        tally.error = f"{type(e).__name__}: {e}"
    finally:
        tally.done = True


def post_until_ok(url: str, signed: Any, tally: WebhookTally) -> None:
    """POST ``signed`` until the gateway answers 200, backing off like Meta."""
    for attempt in range(50):
        try:
            status = post(url, signed, timeout=10)
        except OSError:
            status = 0
        tally.sent += 1
        tally.statuses[status] += 1
        if status == 200:
            return
        time.sleep(min(5.0, 0.2 * 2**attempt))
    raise ConvsyncError("the gateway did not accept a webhook body after 50 tries")
