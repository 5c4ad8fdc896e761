"""Webhook traffic of the fault suite and the truth it makes.

:func:`make_bodies` signs webhook bodies (user messages, page echoes, reads) with the
facts each carries (:class:`Body`); :class:`Load` posts them at a rate from a thread of
its own, retried like Meta until answered 200, counting answers and latencies;
:class:`Truth` (:func:`truth_of`, :func:`crawl_and_webhook_truth`) is what Postgres must
end up holding from the bodies acknowledged and the pages crawled. Separate from the
components' processes (:mod:`tests.fault.pipeline`) and from settling, comparing and
writing results (:mod:`tests.fault.harness`): this is the input side of a scenario.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cli.demo import TruthRow
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.instagram import ACCOUNT as INSTAGRAM_ACCOUNT
from deploy.simulator.webhooks import SignedBody, WebhookSender, page_body
from producers.webhook.fields import user_ref_key

# Every INSTAGRAM_EVERY-th body is the Instagram account's; a Messenger item is a
# chat-plugin guest's (a user_ref, no PSID) with this chance.
INSTAGRAM_EVERY = 10
GUEST_SHARE = 0.05


# --- truth ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Body:
    """One signed webhook POST and the facts it carries."""

    signed: SignedBody
    items: int
    messages: tuple[TruthRow, ...]
    reads: tuple[tuple[str, str, int], ...]
    guests: tuple[tuple[str, str], ...] = ()  # (page, user_ref key)


@dataclass
class Truth:
    """What Postgres must end up holding."""

    messages: set[TruthRow] = field(default_factory=set)
    reads: dict[tuple[str, str], int] = field(default_factory=dict)
    guests: set[tuple[str, str]] = field(default_factory=set)

    def add(self, body: Body) -> None:
        self.messages.update(body.messages)
        self.guests.update(body.guests)
        for page, psid, mark in body.reads:
            self.reads[(page, psid)] = max(self.reads.get((page, psid), 0), mark)


def make_bodies(
    sender: WebhookSender,
    pages: Sequence[str],
    n: int,
    *,
    known: dict[str, list[str]] | None = None,
    users_per_page: int = 200,
) -> list[Body]:
    """Return ``n`` signed bodies of 1-3 items: user messages, page echoes and reads.

    Reads only go to conversations that already got a message in an earlier body, so
    every conversation of the truth has messages. ``known`` psids (e.g. the crawled
    pages' users) are mixed with fresh ones. Some user messages are chat-plugin guests'
    (a ``user_ref``: a conversation of its own each), and every ``INSTAGRAM_EVERY``-th
    body is an ``instagram`` one (messages and the account's echoes).
    """
    rng = sender.rng
    users = {
        p: list((known or {}).get(p, [])) + [sender.psid() for _ in range(users_per_page)]
        for p in pages
    }
    ig_users = [sender.psid() for _ in range(users_per_page)]
    talked: dict[str, list[str]] = {p: [] for p in pages}
    out: list[Body] = []
    for i in range(n):
        if i % INSTAGRAM_EVERY == INSTAGRAM_EVERY - 1:
            out.append(_instagram_body(sender, ig_users, i))
            continue
        page = pages[i % len(pages)]
        items: list[dict[str, Any]] = []
        msgs: list[TruthRow] = []
        reads: list[tuple[str, str, int]] = []
        guests: list[tuple[str, str]] = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            psid = rng.choice(users[page])
            roll = rng.random()
            if roll < GUEST_SHARE:
                ref = f"guest-{page}-{rng.randrange(50)}"
                guest = user_ref_key(ref)
                assert guest is not None
                text = f"guest {i}"
                item = sender.message(page, "0", text=text)
                item["sender"] = {"user_ref": ref}
                msgs.append((page, guest, item["message"]["mid"], text, "inbound"))
                guests.append((page, guest))
                items.append(item)
                continue
            if roll < 0.15 and talked[page]:
                psid = rng.choice(talked[page])
                item = sender.read(page, psid)
                reads.append((page, psid, int(item["read"]["watermark"])))
            elif roll < 0.35:
                text = f"reply {i}"
                item = sender.echo(page, psid, text=text)
                msgs.append((page, psid, item["message"]["mid"], text, "outbound"))
            else:
                text = f"hello {i} ✓"
                item = sender.message(page, psid, text=text)
                msgs.append((page, psid, item["message"]["mid"], text, "inbound"))
            items.append(item)
        for page_, psid, *_ in msgs:
            if psid.isdigit():  # a guest's read is not one of these items
                talked[page_].append(psid)
        signed = sender.sign(page_body([(page, items, [])], time=sender.now()))
        out.append(Body(signed, len(items), tuple(msgs), tuple(reads), tuple(guests)))
    return out


def _instagram_body(sender: WebhookSender, users: Sequence[str], i: int) -> Body:
    """Return an ``instagram`` body of 1-2 items: a user's message or the account's echo."""
    rng, acct = sender.rng, INSTAGRAM_ACCOUNT
    items: list[dict[str, Any]] = []
    msgs: list[TruthRow] = []
    for _ in range(rng.choice((1, 1, 2))):
        user = rng.choice(users)
        if rng.random() < 0.3:
            text = f"ig reply {i}"
            item = sender.echo(acct, user, text=text)
            # Instagram's echoes carry neither app_id nor metadata.
            del item["message"]["app_id"], item["message"]["metadata"]
            msgs.append((acct, user, item["message"]["mid"], text, "outbound"))
        else:
            text = f"instagram {i}"
            item = sender.message(acct, user, text=text)
            msgs.append((acct, user, item["message"]["mid"], text, "inbound"))
        items.append(item)
    raw = page_body([(acct, items, [])], time=sender.now(), obj="instagram")
    return Body(sender.sign(raw), len(items), tuple(msgs), ())


def truth_of(bodies: Iterable[Body]) -> Truth:
    truth = Truth()
    for b in bodies:
        truth.add(b)
    return truth


def crawl_and_webhook_truth(world: GraphWorld, accepted: Iterable[Body]) -> Truth:
    """The truth of a run that crawls every page of ``world`` while ``accepted`` bodies
    are acknowledged: every crawled message, every webhook message and read."""
    truth = truth_of(accepted)
    for page in world.page_ids:
        truth.messages |= {(a, b, c, d, e) for a, b, c, d, e in world.expected(page)["messages"]}
    return truth


# --- load -------------------------------------------------------------------------------
@dataclass
class Load:
    """Posts bodies at ``rate``/s; each is retried like Meta until answered 200."""

    url: str
    bodies: Sequence[Body]
    rate: float
    concurrency: int = 64
    give_up_after: float = 180.0
    posts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    first_answers: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of every POST, in seconds
    accepted: list[Body] = field(default_factory=list)
    retried_to_200: int = 0
    gave_up: int = 0
    started: float = 0.0
    finished: float = 0.0
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the load in a background thread with its own event loop."""
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def run_blocking(self, timeout: float) -> None:
        """Start and join."""
        self.start()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the load did not finish in {timeout:.0f}s")
        if self.error:
            raise AssertionError(f"the load failed: {self.error}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as e:  # noqa: BLE001 - reported by join()
            self.error = f"{type(e).__name__}: {e}"

    async def _run(self) -> None:
        self.started = time.monotonic()
        sem = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=15)
        conn = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            tasks = []
            for i, body in enumerate(self.bodies):
                delay = self.started + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                tasks.append(asyncio.create_task(self._deliver(session, body, sem)))
            await asyncio.gather(*tasks)
        self.finished = time.monotonic()

    async def _deliver(
        self, session: aiohttp.ClientSession, body: Body, sem: asyncio.Semaphore
    ) -> None:
        try:
            deadline = time.monotonic() + self.give_up_after
            attempt = 0
            while True:
                began = time.monotonic()
                status = await post_once(session, self.url, body.signed)
                self.latencies.append(time.monotonic() - began)
                self.posts += 1
                self.statuses[status] += 1
                if attempt == 0:
                    self.first_answers[status] += 1
                if status == 200:
                    self.accepted.append(body)
                    if attempt:
                        self.retried_to_200 += 1
                    return
                if time.monotonic() > deadline:
                    self.gave_up += 1
                    return
                await asyncio.sleep(min(3.0, 0.1 * 2**attempt))
                attempt += 1
        finally:
            sem.release()


async def post_once(session: aiohttp.ClientSession, url: str, signed: SignedBody) -> int:
    """POST once; a connection failure is status 0."""
    try:
        async with session.post(url, data=signed.raw, headers=signed.headers) as resp:
            await resp.read()
            return resp.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0
