"""The change-stream fold: a conversation's bounded state, its side tables, its changes.

:func:`step` folds one event into a conversation's state the way the reference fold
(:mod:`schemas.fold`) does, and adds what a change stream needs on top of a projection:
which message events are already folded in (so a duplicate changes nothing and emits
nothing), a per-conversation sequence number, and the list of what changed. It is a pure
function of the previous state, the event and the side tables it reads (:class:`Side`),
so the faust app and the plain confluent-kafka loop of the benchmark share it, and
replaying the same events after a crash yields the same records with the same numbers.

The reference keeps every message's edit and the whole texts; a stream state must stay
under a fixed size whatever the history (docs/streams.md, "Bounded state"). So the
conversation's record keeps only what the fold reads:

* the scalars, the last message (its key, mid and text) and the winning edit of the last
  message only; texts cut to :data:`schemas.copies.TEXT_CAP` bytes, with the digest of
  a text that was cut, so that ties are still ordered exactly (:func:`text_rank`);
* the sequence number and the folded message digests (:mod:`streams.digests`): inline
  up to 255, then sealed chunks of 256 in the digests table.

The winning edit of every message (by ``(num_edit, event_id, text_rank)``, text cut) is
in the edits table under ``["page:psid", mid]``: read when that message becomes the last
one; an edit of the current last message updates the record at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import orjson

from schemas.conversation import (
    CONVERSATION_SCHEMA_VERSION,
    ChangeKind,
    ConversationChange,
    conversation_key,
)
from schemas.copies import cut_text, edit_number, text_digest, text_rank
from schemas.envelope import Envelope
from schemas.fold import ConversationState
from streams.digests import CHUNK, DIGEST, DigestIndex, digest, insert

# (num_edit, event_id, text cut to TEXT_CAP, digest of the whole text if it was cut)
Edit = tuple[int, str, str | None, str | None]
_CHUNK_BYTES: Final = CHUNK * DIGEST
# A message id longer than this many bytes is kept as its digest (it only has to match
# the same id again); a thread id is cut to THREAD_CAP bytes (cutting keeps their order,
# so the greatest cut id is the greatest id cut).
MID_CAP: Final = 256
THREAD_CAP: Final = 1024
# No table value and no change record of the stream is larger (docs/streams.md,
# "Bounded state": two texts of TEXT_CAP bytes, JSON-escaped at worst 6 bytes per byte,
# plus ids and 255 inline digests: < 400 KiB), well under Kafka's 1 MiB default.
RECORD_BOUND: Final = 512 * 1024


def mid_key(mid: str) -> str:
    """Return how the stream keeps a message id: itself, or the digest of a long one."""
    if len(mid) <= MID_CAP // 4 or len(mid.encode("utf-8", "surrogatepass")) <= MID_CAP:
        return mid
    return "sha256:" + text_digest(mid)


def thread_key(thread_id: str) -> str:
    """Return a thread id cut to THREAD_CAP bytes."""
    return cut_text(thread_id, THREAD_CAP)


def cut(text: str | None) -> tuple[str | None, str | None]:
    """Return ``text`` cut to TEXT_CAP bytes and, if it was cut, its whole text's digest."""
    if text is None:
        return None, None
    short = cut_text(text)
    return short, None if len(short) == len(text) else text_digest(text)


def edit_rank(edit: Edit) -> tuple[int, str, tuple[bool, str, str]]:
    """The order of the edits of one message (:func:`schemas.fold.edit_rank`)."""
    return (edit[0], edit[1], text_rank(edit[2], edit[3]))


def edit_of(event: Envelope) -> Edit:
    """Return an edit event as the edits table keeps it."""
    return (edit_number(event), event.event_id, *cut(event.text))


class Side(Protocol):
    """What a conversation's fold reads outside its own record."""

    def sealed(self, key: str, state: StreamState, value: bytes) -> bool:
        """Return whether ``value`` is in the sealed chunks ``state`` counts."""

    def edit(self, key: str, mid: str) -> Edit | None:
        """Return the winning edit of message ``mid`` of conversation ``key``, if any."""


@dataclass(frozen=True, slots=True)
class StreamState:
    """One conversation as the change stream keeps it.

    ``conversation`` is the reference state except that its texts are cut to
    TEXT_CAP bytes and its ``edits`` hold the last message's edit only.
    """

    conversation: ConversationState
    seq: int = 0
    open: bytes = b""  # sorted digests not sealed yet (fewer than CHUNK)
    sealed: int = 0  # chunks in the digests table
    text_digest: str | None = None  # of the last message's whole text, if it was cut
    edit_digest: str | None = None  # of its edit's whole text, if it was cut

    @property
    def key(self) -> str:
        return conversation_key(self.conversation.page_id, self.conversation.psid)

    @property
    def edit(self) -> Edit | None:
        """The last message's winning edit."""
        for _, (num, event_id, text) in self.conversation.edits:
            return (num, event_id, text, self.edit_digest)
        return None

    @property
    def text_cut(self) -> bool:
        """Whether the last message's text (as edited) was cut to TEXT_CAP bytes."""
        if self.conversation.edits:
            return self.edit_digest is not None
        return self.text_digest is not None


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of folding one event: the new state, the change it made, if any, and
    what it writes to the side tables."""

    state: StreamState
    previous: ConversationState
    changes: tuple[ChangeKind, ...] = ()
    duplicate: bool = False  # the event was already folded in: it changed nothing
    chunk: bytes | None = None  # a sealed chunk, number ``state.sealed - 1``
    edit: tuple[str, Edit] | None = None  # (mid, its new winning edit)

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


def _max(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _min(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _with_edit(changes: dict[str, Any], mid: str, edit: Edit | None) -> None:
    changes["edits"] = () if edit is None else ((mid, edit[:3]),)
    changes["edit_digest"] = None if edit is None else edit[3]


def _fold(state: StreamState, event: Envelope, again: bool, side: Side) -> dict[str, Any]:
    """Return the changed fields (of the conversation and of ``state``) of one event."""
    c = state.conversation
    changes: dict[str, Any] = {}
    if event.thread_id:
        changes["thread_id"] = _max(c.thread_id, thread_key(event.thread_id))
    if event.kind == "message":
        t = event.occurred_at
        if not again:
            changes["message_count"] = c.message_count + 1
        changes["first_message_at"] = _min(c.first_message_at, t)
        changes["last_message_at"] = _max(c.last_message_at, t)
        key = (t, event.event_id)
        last = c.last_message_key
        if (
            last is None
            or key > last
            or (
                key == last
                and text_rank(event.text)
                > text_rank(c.last_message_original_text, state.text_digest)
            )
        ):
            text, sha = cut(event.text)
            mid = None if event.mid is None else mid_key(event.mid)
            changes["last_message_key"] = key
            changes["last_message_mid"] = mid
            changes["last_message_original_text"] = text
            changes["text_digest"] = sha
            if mid != c.last_message_mid:
                _with_edit(changes, mid or "", side.edit(state.key, mid) if mid else None)
        if event.direction == "inbound":
            changes["last_inbound_at"] = _max(c.last_inbound_at, t)
        elif event.direction == "outbound":
            changes["last_outbound_at"] = _max(c.last_outbound_at, t)
    elif event.kind == "read":
        changes["read_watermark"] = _max(c.read_watermark, event.watermark)
    elif event.kind == "delivery":
        changes["delivered_watermark"] = _max(c.delivered_watermark, event.watermark)
    return changes


def step(state: StreamState | None, event: Envelope, side: Side) -> Step:
    """Return the result of folding ``event`` into ``state`` (``None``: never seen).

    A copy of an event already folded in is not counted again. A message copy may still
    move the times or the text (the webhook's copy of a message the crawler folded
    first): a ``message`` change. Any copy may teach the thread id (the crawler's copy of
    a webhook message): a ``thread`` change. A new event that changes no public field (a
    reaction, a lower read watermark) emits nothing, unless it is the first event of the
    conversation (``created``). An event that leaves the state and the side tables as
    they were is reported as a duplicate.

    The caller stores ``Step.chunk`` and ``Step.edit`` so that ``side`` returns them
    from then on; it makes a chunk durable before any state that counts it, and an edit
    after the state of its batch (docs/streams.md, "Bounded state").
    """
    created = state is None
    if state is None:
        state = StreamState(ConversationState(page_id=event.page_id, psid=event.psid))
    old = state.conversation
    again = False
    chunk: bytes | None = None
    extra: dict[str, Any] = {}
    if event.kind == "message":
        # A digest already there is this message folded in before: this copy is not
        # counted again, but its time, direction and text are facts the fold reads. A
        # 64-bit collision of two messages in one conversation (odds ~n^2/2^65) would
        # count one message less; counting a copy twice is what the reference never does.
        value = digest(event.event_id)
        grown = insert(state.open, value)
        if grown is None or (state.sealed and side.sealed(state.key, state, value)):
            again = True
        else:
            if len(grown) >= _CHUNK_BYTES:
                chunk, grown = grown, b""
                extra["sealed"] = state.sealed + 1
            extra["open"] = grown
    changes = _fold(state, event, again, side)
    edit: tuple[str, Edit] | None = None
    if event.kind == "edit" and event.mid:
        mid = mid_key(event.mid)
        candidate = edit_of(event)
        current = side.edit(state.key, mid)
        if current is None or edit_rank(candidate) > edit_rank(current):
            edit = (mid, candidate)
        if mid == old.last_message_mid:
            # The record's copy of the last message's edit: the greatest of the
            # candidate, the table's and its own (after a crash between the table's
            # write and the record's, the table may be ahead of it).
            mine = state.edit
            best = max((e for e in (candidate, current, mine) if e is not None), key=edit_rank)
            if best != mine:
                _with_edit(changes, mid, best)
    conv_changes = {k: v for k, v in changes.items() if k not in ("text_digest", "edit_digest")}
    new = replace(old, **conv_changes) if conv_changes else old
    if new == old:
        new = old
    state_changes = {k: v for k, v in changes.items() if k in ("text_digest", "edit_digest")}
    state_changes.update(extra)
    diff = _diff(old, new, created=created)
    if new is old and not created and all(getattr(state, k) == v for k, v in state_changes.items()):
        # The record is unchanged (the caller need not write it); an edit of another
        # message that wins still goes to the edits table.
        return Step(state, old, duplicate=edit is None, edit=edit)
    seq = state.seq + 1 if diff else state.seq
    return Step(
        replace(state, conversation=new, seq=seq, **state_changes),
        old,
        diff,
        chunk=chunk,
        edit=edit,
    )


@dataclass
class MemorySide:
    """The side tables in memory: for tests, the offline fold and the benchmark."""

    chunks: dict[tuple[str, int], bytes] = field(default_factory=dict)
    edits: dict[tuple[str, str], Edit] = field(default_factory=dict)
    indexes: dict[str, DigestIndex] = field(default_factory=dict)

    def sealed(self, key: str, state: StreamState, value: bytes) -> bool:
        index = self.indexes.get(key)
        if index is None or index.chunks != state.sealed:
            index = DigestIndex.build(self.chunks[(key, n)] for n in range(state.sealed))
            self.indexes[key] = index
        return value in index

    def edit(self, key: str, mid: str) -> Edit | None:
        return self.edits.get((key, mid))

    def record(self, result: Step) -> None:
        """Keep what ``result`` writes to the side tables."""
        key = result.state.key
        if result.chunk is not None:
            self.chunks[(key, result.state.sealed - 1)] = result.chunk
            index = self.indexes.get(key)
            if index is not None and index.chunks == result.state.sealed - 1:
                index.add(result.chunk)
        if result.edit is not None:
            self.edits[(key, result.edit[0])] = result.edit[1]


def public(state: StreamState) -> dict[str, Any]:
    """Return the state fields of a change record: ``ConversationState.public()`` with
    ``last_message_text_truncated`` after the text."""
    out: dict[str, Any] = {}
    for name, value in state.conversation.public().items():
        out[name] = value
        if name == "last_message_text":
            out["last_message_text_truncated"] = state.text_cut
    return out


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
        **public(s),
    )


def encode_change(result: Step, event: Envelope) -> bytes:
    """Return ``to_record(result, event).to_bytes()``, without building the pydantic model.

    The record's fields are all plain JSON values (ints, strings, None, bools, a list of
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
            **public(state),
        }
    )
