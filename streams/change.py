"""The change-stream fold: a conversation's state, its seen events and its change records.

:func:`step` wraps the reference fold (:mod:`schemas.fold`) with what a change stream
needs on top of a projection: the set of event ids already folded in (so a duplicate
changes nothing and emits nothing), a per-conversation sequence number, and the list
of what changed. It is a pure function of the previous state and the event, so the
faust app and the plain confluent-kafka loop of the benchmark share it, and replaying
the same events after a crash yields the same records with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from schemas.conversation import ChangeKind, ConversationChange, conversation_key
from schemas.envelope import Envelope
from schemas.fold import ConversationState, apply, learn_thread

_ID_PREFIX_LEN = len("ev1_")


@dataclass(frozen=True, slots=True)
class StreamState:
    """One conversation as the change stream keeps it."""

    conversation: ConversationState
    seq: int = 0
    seen: frozenset[str] = field(default=frozenset())  # event ids without "ev1_"

    @property
    def key(self) -> str:
        return conversation_key(self.conversation.page_id, self.conversation.psid)


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of folding one event: the new state and the change it made, if any."""

    state: StreamState
    previous: ConversationState
    changes: tuple[ChangeKind, ...] = ()
    duplicate: bool = False  # the event id had been folded in before

    @property
    def emitted(self) -> bool:
        return bool(self.changes)


def _diff(
    old: ConversationState, new: ConversationState, *, created: bool
) -> tuple[ChangeKind, ...]:
    out: list[ChangeKind] = []
    if created:
        out.append("created")
    if (
        new.message_count != old.message_count
        or new.first_message_at != old.first_message_at
        or new.last_message_at != old.last_message_at
        or new.last_inbound_at != old.last_inbound_at
        or new.last_outbound_at != old.last_outbound_at
    ):
        out.append("message")
    elif new.last_message_text != old.last_message_text:
        out.append("edited")
    if old.needs_reply and not new.needs_reply:
        out.append("replied")
    if new.needs_reply and not old.needs_reply:
        out.append("needs_reply")
    if new.read_watermark != old.read_watermark:
        out.append("read")
    if new.delivered_watermark != old.delivered_watermark:
        out.append("delivered")
    if new.thread_id != old.thread_id:
        out.append("thread")
    return tuple(out)


def step(state: StreamState | None, event: Envelope) -> Step:
    """Return the result of folding ``event`` into ``state`` (``None``: never seen).

    A duplicate event (its id already folded in) changes nothing and emits nothing,
    except that it may teach the thread id (the crawler's copy of a webhook message),
    which is a ``thread`` change. A new event that changes no public field (a reaction,
    a lower read watermark) is remembered as seen and emits nothing, unless it is the
    first event of the conversation (``created``).
    """
    created = state is None
    if state is None:
        state = StreamState(ConversationState(page_id=event.page_id, psid=event.psid))
    old = state.conversation
    short = event.event_id[_ID_PREFIX_LEN:]
    duplicate = short in state.seen
    if duplicate:
        new = learn_thread(old, event)
        seen = state.seen
    else:
        new = apply(old, event)
        seen = state.seen | {short}
    changes = _diff(old, new, created=created)
    seq = state.seq + 1 if changes else state.seq
    if new is old and seen is state.seen:
        return Step(state, old, duplicate=duplicate)
    return Step(StreamState(new, seq, seen), old, changes, duplicate=duplicate)


def to_record(result: Step, event: Envelope) -> ConversationChange:
    """Return the change record of a step that emitted (``result.changes`` not empty)."""
    if not result.changes:
        raise ValueError("this step changed nothing")
    s = result.state
    return ConversationChange(
        key=s.key,
        seq=s.seq,
        changes=list(result.changes),
        event_id=event.event_id,
        event_kind=event.kind,
        occurred_at=event.occurred_at,
        **s.conversation.public(),
    )


def encode_state(state: StreamState) -> bytes:
    """Return ``state`` as JSON bytes (the table changelog value)."""
    c = state.conversation
    doc: dict[str, Any] = {
        "page_id": c.page_id,
        "psid": c.psid,
        "thread_id": c.thread_id,
        "first_message_at": c.first_message_at,
        "last_message_at": c.last_message_at,
        "message_count": c.message_count,
        "last_message_key": c.last_message_key,
        "last_message_mid": c.last_message_mid,
        "last_message_original_text": c.last_message_original_text,
        "last_inbound_at": c.last_inbound_at,
        "last_outbound_at": c.last_outbound_at,
        "read_watermark": c.read_watermark,
        "delivered_watermark": c.delivered_watermark,
        "edits": c.edits,
        "seq": state.seq,
        "seen": sorted(state.seen),
    }
    return orjson.dumps(doc)


def decode_state(data: bytes) -> StreamState:
    """Return the state encoded by :func:`encode_state`. Raises ``ValueError``."""
    doc = orjson.loads(data)
    try:
        key = doc.pop("last_message_key")
        edits = doc.pop("edits")
        seq = doc.pop("seq")
        seen = doc.pop("seen")
        conversation = ConversationState(
            **doc,
            last_message_key=None if key is None else (int(key[0]), str(key[1])),
            edits=tuple((mid, (int(w[0]), str(w[1]), w[2])) for mid, w in edits),
        )
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"not a stream state: {e}") from e
    return replace(StreamState(conversation), seq=int(seq), seen=frozenset(seen))
