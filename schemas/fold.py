"""The conversation fold (DESIGN.md decision 6): state as an order-free function of events.

This is the reference definition of a conversation's state. The Postgres materializer
implements it in SQL and the faust change stream in Python; both are tested against it.

An event may arrive in several *copies* (same event id): Meta's retries and re-batched
webhooks (identical), the webhook's copy of a message and the crawler's (Graph's
``created_time`` has whole seconds where the webhook has milliseconds, and a message
crawled past Graph's detail window has no sender, so no direction, and no text), and
conflicting copies in bad data. Every copy is a fact about its event, so the fold reads
all of them (:mod:`schemas.copies` says how copies merge into the stored row).

A conversation ``(page_id, psid)`` is the fold of the *set* of event copies that name
it. A copy of an event id that names another user (bad data: an edit's id, for one, has
no psid) is a fact of that other conversation, never of this one. Within the set:

* ``message_count``: number of distinct ``message`` event ids;
* ``first_message_at`` / ``last_message_at``: min / max ``occurred_at`` of every message
  copy;
* the *last message* is the message copy with the greatest ``(occurred_at, event_id)``,
  ties between copies of one message broken by :func:`text_rank` (a text beats none,
  then code point order); ``last_message_text`` is its text as edited: the ``edit`` copy
  with the greatest ``(num_edit, event_id, text_rank(text))`` targeting its ``mid`` wins,
  whenever that edit arrived. Both equal what the merged ``events`` rows give (the
  message row's text is that of its latest copy; an edit row's that of its highest
  ``num_edit``; the winning edit row is the greatest ``(num_edit, event_id)``);
* ``last_inbound_at`` / ``last_outbound_at``: max ``occurred_at`` of the message copies
  of each direction (a copy without direction counts for neither);
* ``needs_reply``: an inbound message later than every outbound one;
* ``read_watermark`` / ``delivered_watermark``: max watermark of ``read`` / ``delivery``;
* ``thread_id``: the greatest non-null thread id of any copy (there is only one in
  practice): the webhook never carries it, so the crawler's copy of an already-stored
  message is how it is learned.

Every rule is a max, a min or a count of a set, so any order and any number of copies of
the same events give the same state. ``apply`` is told whether the event id is new to the
conversation (the caller dedupes by event id within the conversation; only the message
count depends on it); ``project`` dedupes itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.copies import edit_number, text_rank
from schemas.envelope import Envelope

__all__ = [
    "ConversationKey",
    "ConversationState",
    "apply",
    "edit_number",
    "edit_rank",
    "project",
    "text_rank",
]

ConversationKey = tuple[str, str]


def _max(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _min(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True, slots=True)
class ConversationState:
    """The folded state of one conversation. Times are ms since the epoch."""

    page_id: str
    psid: str
    thread_id: str | None = None
    first_message_at: int | None = None
    last_message_at: int | None = None
    message_count: int = 0
    last_message_key: tuple[int, str] | None = None  # (occurred_at, event_id)
    last_message_mid: str | None = None
    last_message_original_text: str | None = None
    last_inbound_at: int | None = None
    last_outbound_at: int | None = None
    read_watermark: int | None = None
    delivered_watermark: int | None = None
    # mid -> (num_edit, event_id, text) of the winning edit of that message.
    edits: tuple[tuple[str, tuple[int, str, str | None]], ...] = field(default=())

    @property
    def key(self) -> ConversationKey:
        return (self.page_id, self.psid)

    @property
    def needs_reply(self) -> bool:
        """True when the user wrote after the page's last answer."""
        if self.last_inbound_at is None:
            return False
        return self.last_outbound_at is None or self.last_inbound_at > self.last_outbound_at

    @property
    def last_message_text(self) -> str | None:
        """The last message's text, as edited."""
        if self.last_message_mid is not None:
            for mid, (_, _, text) in self.edits:
                if mid == self.last_message_mid:
                    return text
        return self.last_message_original_text

    def public(self) -> dict[str, Any]:
        """Return the columns of the ``conversations`` read contract (times in ms)."""
        return {
            "page_id": self.page_id,
            "psid": self.psid,
            "thread_id": self.thread_id,
            "first_message_at": self.first_message_at,
            "last_message_at": self.last_message_at,
            "message_count": self.message_count,
            "last_message_text": self.last_message_text,
            "last_inbound_at": self.last_inbound_at,
            "last_outbound_at": self.last_outbound_at,
            "needs_reply": self.needs_reply,
            "read_watermark": self.read_watermark,
            "delivered_watermark": self.delivered_watermark,
        }


def apply(state: ConversationState, event: Envelope, *, again: bool = False) -> ConversationState:
    """Return ``state`` with one event copy folded in.

    ``again``: a copy of this event id was folded into this conversation before (the
    caller dedupes by event id within the conversation). It is then not counted again;
    every other rule is a maximum, so the copy adds what it knows (its time, direction,
    text, thread id, edit text) and a copy that knows nothing new changes nothing.
    Raises ``ValueError`` for an event of another conversation.
    """
    if (event.page_id, event.psid) != state.key:
        raise ValueError("event belongs to another conversation")
    changes: dict[str, Any] = {}
    if event.thread_id:
        changes["thread_id"] = _max(state.thread_id, event.thread_id)
    if event.kind == "message":
        t = event.occurred_at
        if not again:
            changes["message_count"] = state.message_count + 1
        changes["first_message_at"] = _min(state.first_message_at, t)
        changes["last_message_at"] = _max(state.last_message_at, t)
        key = (t, event.event_id)
        if (
            state.last_message_key is None
            or key > state.last_message_key
            or (
                key == state.last_message_key
                and text_rank(event.text) > text_rank(state.last_message_original_text)
            )
        ):
            changes["last_message_key"] = key
            changes["last_message_mid"] = event.mid
            changes["last_message_original_text"] = event.text
        if event.direction == "inbound":
            changes["last_inbound_at"] = _max(state.last_inbound_at, t)
        elif event.direction == "outbound":
            changes["last_outbound_at"] = _max(state.last_outbound_at, t)
    elif event.kind == "edit" and event.mid:
        edits = dict(state.edits)
        candidate = (edit_number(event), event.event_id, event.text)
        current = edits.get(event.mid)
        if current is None or edit_rank(candidate) > edit_rank(current):
            edits[event.mid] = candidate
            changes["edits"] = tuple(sorted(edits.items()))
    elif event.kind == "read":
        changes["read_watermark"] = _max(state.read_watermark, event.watermark)
    elif event.kind == "delivery":
        changes["delivered_watermark"] = _max(state.delivered_watermark, event.watermark)
    return replace(state, **changes) if changes else state


def edit_rank(edit: tuple[int, str, str | None]) -> tuple[int, str, tuple[bool, str, str]]:
    """Order of the edits of one message: ``(num_edit, event_id)``, then their texts (the
    copies of one edit id may differ in bad data)."""
    return (edit[0], edit[1], text_rank(edit[2]))


def project(events: Iterable[Envelope]) -> dict[ConversationKey, ConversationState]:
    """Return the state of every conversation in ``events`` (duplicates ignored).

    Copies are deduplicated by event id within each conversation.
    """
    seen: set[tuple[str, str, str]] = set()
    out: dict[ConversationKey, ConversationState] = {}
    for event in events:
        key = (event.page_id, event.psid)
        state = out.get(key) or ConversationState(page_id=event.page_id, psid=event.psid)
        copy = (event.event_id, event.page_id, event.psid)
        again = copy in seen
        seen.add(copy)
        out[key] = apply(state, event, again=again)
    return out
