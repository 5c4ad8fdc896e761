"""The simulated Graph API's Instagram inbox: one account's conversations, seeded.

Graph lists an Instagram professional account's conversations through its linked
Facebook Page (``/{page}/conversations?platform=instagram``, the page's token). Here the
account's users are Instagram-scoped ids (digits of another range than the pages'
users), its thread ids are base64 like Meta's (``aWdf...``, "ig_..."), its message ids
the same ids its webhooks carry (``aWdf...``), and a message without text is a shared
post (``shares``). :meth:`GraphWorld.link_instagram` serves them.
"""

from __future__ import annotations

import random
from typing import Final

from deploy.simulator.graph_world import BASE_MS, FakeConversation, FakeMessage

# Prefixes of the fake's Instagram ids ("ig_..." in base64, as Meta's look).
THREAD_PREFIX: Final = "aWdfZAG06"
MID_PREFIX: Final = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx"


def instagram_inbox(
    *,
    seed: int,
    account_id: str,
    conversations: int = 20,
    max_messages: int = 6,
    textless_ratio: float = 0.1,
) -> list[FakeConversation]:
    """Return ``conversations`` Instagram threads of ``account_id``, newest updated first.

    Deterministic from ``seed``; the users' ids never collide with the pages' users.
    """
    rng = random.Random(f"instagram-{seed}-{account_id}")  # noqa: S311 - seeded test data
    convs: list[FakeConversation] = []
    t = BASE_MS
    for c in range(conversations):
        user = str(rng.randint(10**15, 10**16 - 1))
        msgs = []
        for m in range(rng.randint(1, max_messages)):
            t += rng.randint(1, 5) * 1000
            text = None if rng.random() < textless_ratio else f"ig hello {c}.{m}"
            mid = f"{MID_PREFIX}{account_id}_{c}_{m}"
            msgs.append(FakeMessage(mid, t, rng.random() < 0.3, text))
        msgs.reverse()
        thread = f"{THREAD_PREFIX}{account_id}_{c}"
        convs.append(FakeConversation(thread, account_id, user, msgs, instagram=True))
    convs.sort(key=lambda cv: cv.updated_ms, reverse=True)
    return convs
