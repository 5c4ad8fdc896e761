"""A fake of Meta's webhook sender for one Instagram account: signed ``instagram`` bodies.

Items follow Meta's Instagram Messaging webhooks (``object: instagram``; the account id
as ``entry.id`` and as the recipient): messages (some replying to a story), the
account's echoes, unsends (``message.is_deleted``), reactions and ``messaging_seen``
(``read`` naming a ``mid``, no watermark). Given the account's conversations that the
simulated Graph API serves (``known``), some bodies re-deliver a message Graph also lists
(same ``mid``): the crawled and the webhook copy must be one event. Each body comes with
what it makes true, so a caller (the demo) can compare Postgres with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from deploy.simulator.graph_world import FakeConversation
from deploy.simulator.webhooks import SignedBody, WebhookSender, page_body

# An Instagram professional account id (17841... like Meta's): never one of the
# simulated page ids.
ACCOUNT: Final = "17841400000000001"

Item = dict[str, Any]
TruthRow = tuple[str, str, str, str | None, str | None]  # account, user, mid, text, direction


@dataclass
class InstagramBody:
    """One signed body and what it makes true."""

    signed: SignedBody
    # The messages it adds (kind message: the account's echoes too; an unsent message
    # stays a message).
    messages: list[TruthRow]
    # (account, user) -> the read watermark a messaging_seen sets (the item's time).
    reads: dict[tuple[str, str], int]


@dataclass
class InstagramTraffic:
    """Deterministic Instagram traffic for one account, from ``sender``'s random source."""

    sender: WebhookSender
    account: str = ACCOUNT
    users: int = 20
    # The account's conversations on the simulated Graph API (crawled), for re-deliveries.
    known: list[FakeConversation] = field(default_factory=list)
    # Each user's messages so far (mids), for echoes, unsends, reactions and seen.
    written: dict[str, list[str]] = field(default_factory=dict)
    _ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Instagram-scoped ids are digits too, of another range than the pages' users.
        self._ids = [str(self.sender.rng.randint(10**15, 10**16 - 1)) for _ in range(self.users)]

    @property
    def user_ids(self) -> list[str]:
        """Return the Instagram-scoped ids of the users who write."""
        return list(self._ids)

    def _mid(self) -> str:
        # Instagram's mids are base64 (aWdf... "ig_..."), unlike Messenger's m_....
        return "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx" + self.sender.mid()[2:44]

    def body(self, n: int) -> InstagramBody:
        """Return the ``n``-th body: one item of a kind drawn by the sender's random."""
        rng, acct = self.sender.rng, self.account
        if self.known and rng.random() < 0.15:
            again = self._redelivery(rng.choice(self.known))
            if again is not None:
                item, row = again
                raw = page_body([(acct, [item], [])], time=self.sender.now(), obj="instagram")
                return InstagramBody(self.sender.sign(raw), [row], {})
        user = rng.choice(self._ids)
        mids = self.written.get(user, [])
        roll = rng.random()
        messages: list[TruthRow] = []
        reads: dict[tuple[str, str], int] = {}
        if not mids or roll < 0.45:  # the user writes (sometimes replying to a story)
            text = f"instagram {n}"
            mid = self._mid()
            item = self.sender.message(acct, user, text=text, mid=mid)
            if rng.random() < 0.2:
                story = {"id": str(rng.randint(10**18, 10**19 - 1)), "url": "https://x.invalid/s"}
                item["message"]["reply_to"] = {"story": story}
            self.written.setdefault(user, []).append(mid)
            messages.append((acct, user, mid, text, "inbound"))
        elif roll < 0.65:  # the account answers
            mid = self._mid()
            item = self.sender.echo(acct, user, text=f"ig reply {n}", mid=mid)
            del item["message"]["app_id"], item["message"]["metadata"]
            messages.append((acct, user, mid, f"ig reply {n}", "outbound"))
        elif roll < 0.75:  # the user takes a message back: it stays a message, deleted
            item = self.sender.unsend(acct, user, rng.choice(mids))
        elif roll < 0.85:  # a reaction
            item = self.sender.reaction(acct, user, rng.choice(mids))
        else:  # messaging_seen: the user saw their conversation up to now
            ts = self.sender.now()
            item = {
                "sender": {"id": user},
                "recipient": {"id": acct},
                "timestamp": ts,
                "read": {"mid": mids[-1]},
            }
            reads[(acct, user)] = ts
        raw = page_body([(acct, [item], [])], time=self.sender.now(), obj="instagram")
        return InstagramBody(self.sender.sign(raw), messages, reads)

    def _redelivery(self, conv: FakeConversation) -> tuple[Item, TruthRow] | None:
        """Return the webhook item of ``conv``'s newest message, which Graph lists too
        (None when it has no text: Graph's copy would be a shared post)."""
        msg = conv.messages[0]
        if msg.text is None or msg.malformed or conv.psid is None:
            return None
        if msg.from_page:
            item = self.sender.echo(self.account, conv.psid, text=msg.text, mid=msg.mid)
            del item["message"]["app_id"], item["message"]["metadata"]
        else:
            item = self.sender.message(self.account, conv.psid, text=msg.text, mid=msg.mid)
        # Meta's webhook time is in ms; Graph's created_time of the same message in s.
        item["timestamp"] = msg.created_ms
        direction = "outbound" if msg.from_page else "inbound"
        return item, (self.account, conv.psid, msg.mid, msg.text, direction)
