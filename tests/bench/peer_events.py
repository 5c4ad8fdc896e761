"""Realistic events for the peer benchmarks: the simulator's webhook items, mapped by the gateway.

The mix of kinds is ``random_events``' (tests/consumers/helpers.py: messages, edits and
reactions of earlier messages, reads and deliveries, a few other kinds) and the copies are
the ones a live inbox gets (the crawler's copy of some messages, Meta's retries of some
items), but every item is what Meta sends (``deploy.simulator.webhooks.WebhookSender``:
88-character mids, texts in several scripts and emoji, attachments, quick replies,
reply-to) and every envelope is what the gateway makes of it
(``producers.webhook.mapping.map_item``: ids, attrs and the raw item as the payload).
"""

from __future__ import annotations

import random

from deploy.simulator.webhooks import WebhookSender
from producers.webhook.mapping import map_item
from schemas.envelope import Envelope
from tests.consumers.helpers import crawler_copy

OTHER_KINDS = ("postback", "referral", "handover", "optin", "unknown")


def realistic_events(
    seed: int, *, pages: int, conversations: int, n: int, copies: float = 0.08
) -> list[Envelope]:
    """Return ``n`` envelopes over ``pages`` x ``conversations // pages`` conversations.

    About ``copies`` of them are copies of earlier events: the crawler's copy of a
    message (whole seconds, the thread id, sometimes bare) or a re-delivered item.
    """
    rng = random.Random(seed)
    sender = WebhookSender(app_secret="bench", seed=seed)
    page_ids = [str(10**14 + 7919 * i) for i in range(pages)]
    users = {p: [sender.psid() for _ in range(max(1, conversations // pages))] for p in page_ids}
    out: list[Envelope] = []
    mids: list[tuple[str, str, str]] = []
    while len(out) < n:
        page = rng.choice(page_ids)
        psid = rng.choice(users[page])
        roll = rng.random()
        if roll < copies and out:
            event = rng.choice(out)
            if event.kind == "message" and event.thread_id is None:
                out.append(crawler_copy(event, bare=rng.random() < 0.3))
            else:
                out.append(event)  # Meta's retry of the same item
            continue
        if roll < 0.6 or not mids:
            kind = "message" if rng.random() < 0.6 else "echo"
        elif roll < 0.72:
            kind = "edit"
        elif roll < 0.8:
            kind = "reaction"
        elif roll < 0.95:
            kind = rng.choice(("read", "delivery"))
        else:
            kind = rng.choice(OTHER_KINDS)
        if kind in ("edit", "reaction"):
            page, psid, mid = rng.choice(mids)
            item = (
                sender.edit(page, psid, mid, num_edit=rng.randrange(1, 4))
                if kind == "edit"
                else sender.reaction(page, psid, mid, action=rng.choice(("react", "unreact")))
            )
        else:
            item = sender.item(kind, page, psid)
        event = map_item(page, item.get("timestamp"), item, "messaging")
        if event.kind == "message" and event.mid is not None:
            mids.append((page, psid, event.mid))
        out.append(event)
    return out
