"""The change-stream fold: a conversation's state, its folded messages and its change records.

:func:`step` wraps the reference fold (:mod:`schemas.fold`) with what a change stream
needs on top of a projection: which message events are already folded in (so a duplicate
changes nothing and emits nothing), a per-conversation sequence number, and the list
of what changed. It is a pure function of the previous state and the event, so the
faust app and the plain confluent-kafka loop of the benchmark share it, and replaying
the same events after a crash yields the same records with the same numbers.

Only ``message`` events need remembering: every other kind folds as a maximum (watermarks,
the winning edit of a mid, the thread id) or not at all (reactions, unknown kinds), so
folding it again changes nothing. A message adds one to ``message_count``, so its id is
kept, as an 8-byte digest (the first 64 bits of the id's sha256 hex) in one sorted
``bytes`` per conversation: 8 bytes per distinct message instead of a Python string in a
set (~100 bytes), and nothing for reads, deliveries, edits, reactions or duplicates.
"""

from __future__ import annotations

import base64
from bisect import bisect_left
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from schemas.conversation import (
    CONVERSATION_SCHEMA_VERSION,
    ChangeKind,
    ConversationChange,
    conversation_key,
)
from schemas.envelope import Envelope
from schemas.fold import ConversationState, apply

_ID_PREFIX_LEN: Final = len("ev1_")
_DIGEST: Final = 8  # bytes of an event id kept per folded message


def digest(event_id: str) -> bytes:
    """Return the 8-byte digest of an event id (its first 16 hex digits after "ev1_")."""
    return bytes.fromhex(event_id[_ID_PREFIX_LEN : _ID_PREFIX_LEN + 2 * _DIGEST])


class _Digests:
    """A read-only sequence view of a sorted digest blob, for :func:`bisect_left`."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // _DIGEST

    def __getitem__(self, i: int) -> bytes:
        return self.blob[i * _DIGEST : (i + 1) * _DIGEST]


def _insert(blob: bytes, key: bytes) -> bytes | None:
    """Return ``blob`` with ``key`` inserted in order, or ``None`` if it is already there."""
    i = bisect_left(_Digests(blob), key)
    at = i * _DIGEST
    if blob[at : at + _DIGEST] == key:
        return None
    return blob[:at] + key + blob[at:]


@dataclass(frozen=True, slots=True)
class StreamState:
    """One conversation as the change stream keeps it."""

    conversation: ConversationState
    seq: int = 0
    seen: bytes = b""  # sorted digests of the folded message events (see the module doc)

    @property
    def key(self) -> str:
        return conversation_key(self.conversation.page_id, self.conversation.psid)


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of folding one event: the new state and the change it made, if any."""

    state: StreamState
    previous: ConversationState
    changes: tuple[ChangeKind, ...] = ()
    duplicate: bool = False  # the event was already folded in: it changed nothing

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

    A copy of an event already folded in is not counted again. A message copy may still
    move the times or the text (the webhook's copy of a message the crawler folded
    first): a ``message`` change. Any copy may teach the thread id (the crawler's copy of
    a webhook message): a ``thread`` change. A new event that changes no public field (a
    reaction, a lower read watermark) emits nothing, unless it is the first event of the
    conversation (``created``). An event that leaves the state as it was is reported as
    a duplicate: a copy that added nothing, or an event of a kind that folds as a maximum
    and added nothing.
    """
    created = state is None
    if state is None:
        state = StreamState(ConversationState(page_id=event.page_id, psid=event.psid))
    old = state.conversation
    seen = state.seen
    if event.kind == "message":
        # A digest already there is this message folded in before: this copy is not
        # counted again, but its time, direction and text are facts the fold reads (the
        # webhook's copy, in ms, of a message the crawler stored first in whole seconds,
        # maybe without sender or text). A 64-bit collision of two messages in one
        # conversation (odds ~n^2/2^65) would count one message less; counting a copy
        # twice is what the reference fold never does.
        grown = _insert(seen, digest(event.event_id))
        if grown is None:
            new = apply(old, event, again=True)
            if new == old:
                new = old
        else:
            new = apply(old, event)
            seen = grown
    else:
        new = apply(old, event)
        if new == old:
            new = old
    changes = _diff(old, new, created=created)
    if new is old and seen is state.seen and not created:
        return Step(state, old, duplicate=True)
    seq = state.seq + 1 if changes else state.seq
    return Step(StreamState(new, seq, seen), old, changes)


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


def encode_change(result: Step, event: Envelope) -> bytes:
    """Return ``to_record(result, event).to_bytes()``, without building the pydantic model.

    The record's fields are all plain JSON values (ints, strings, None, a bool, a list of
    change kinds), so the dict below in the model's field order dumps to the same bytes
    (property test ``test_encode_change_equals_the_model``). Raises ``ValueError`` if the
    step changed nothing.
    """
    if not result.changes:
        raise ValueError("this step changed nothing")
    state = result.state
    c = state.conversation
    return orjson.dumps(
        {
            "schema_version": CONVERSATION_SCHEMA_VERSION,
            "key": f"{c.page_id}:{c.psid}",
            "seq": state.seq,
            "changes": result.changes,
            "event_id": event.event_id,
            "event_kind": event.kind,
            "occurred_at": event.occurred_at,
            **c.public(),
        }
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
        "seen": base64.b64encode(state.seen).decode(),
    }
    # A copy: orjson returns bytes with its whole write buffer allocated (4 KB for a
    # 500-byte state), and the table keeps one value per conversation: that slack was
    # most of the worker's memory growth (docs/streams.md, "Memory").
    return memoryview(orjson.dumps(doc)).tobytes()


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
    if isinstance(seen, list):
        # The first format: every folded event id without "ev1_". Their digests are a
        # superset of the message digests, which the rules allow (ids never repeat
        # across kinds).
        blob = b"".join(sorted({digest("ev1_" + short) for short in seen}))
    else:
        blob = base64.b64decode(seen)
    return replace(StreamState(conversation), seq=int(seq), seen=blob)
