"""The table values of the change stream: conversation records and edits, old formats too.

A conversation record (table ``conversations``) is JSON with ``"v": 3``. Records
written before (no ``"v"``) held every edited message's edit and every folded digest in
one value; the very first format held the folded ids as a list. :func:`decode_state`
reads all three. An old record comes back as a :class:`Decoded` with the side-table
writes that carry it over: its digests sealed into chunks and its edits into the edits
table; the caller writes those before the record in the new format (a crash in between
leaves the old record, which is carried over again).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

import orjson

from schemas.fold import ConversationState
from streams.change import Edit, StreamState, cut, mid_key, thread_key
from streams.digests import CHUNK, DIGEST, digest

FORMAT: Final = 3


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded record and, for an old one, the side-table writes that carry it over."""

    state: StreamState
    chunks: tuple[bytes, ...] = ()  # sealed chunks 0, 1, 2... of the old digests
    edits: tuple[tuple[str, Edit], ...] = ()  # (mid, edit) of every old edit


def encode_state(state: StreamState) -> bytes:
    """Return ``state`` as JSON bytes (the table changelog value)."""
    c = state.conversation
    edit = state.edit
    doc: dict[str, Any] = {
        "v": FORMAT,
        "page_id": c.page_id,
        "psid": c.psid,
        "thread_id": c.thread_id,
        "first_message_at": c.first_message_at,
        "last_message_at": c.last_message_at,
        "message_count": c.message_count,
        "last_message_key": c.last_message_key,
        "last_message_mid": c.last_message_mid,
        "last_message_text": c.last_message_original_text,
        "text_digest": state.text_digest,
        "edit": edit,
        "last_inbound_at": c.last_inbound_at,
        "last_outbound_at": c.last_outbound_at,
        "read_watermark": c.read_watermark,
        "delivered_watermark": c.delivered_watermark,
        "seq": state.seq,
        "open": base64.b64encode(state.open).decode(),
        "sealed": state.sealed,
    }
    # A copy: orjson returns bytes with its whole write buffer allocated (4 KB for a
    # 500-byte state), and the table keeps one value per conversation: that slack was
    # most of the worker's memory growth (docs/streams.md, "Memory").
    return memoryview(orjson.dumps(doc)).tobytes()


def _edit(value: Any) -> Edit | None:
    if value is None:
        return None
    num, event_id, text, sha = value
    return (int(num), str(event_id), text, sha)


def decode_state(data: bytes) -> Decoded:
    """Return the record encoded by :func:`encode_state` or by an older version.

    Raises ``ValueError`` for a value that is none of them.
    """
    try:
        doc = orjson.loads(data)
        if doc.get("v") == FORMAT:
            return Decoded(_current(doc))
        return _legacy(doc)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(f"not a stream state: {e}") from e


def _key(value: Any) -> tuple[int, str] | None:
    return None if value is None else (int(value[0]), str(value[1]))


def _current(doc: dict[str, Any]) -> StreamState:
    edit = _edit(doc["edit"])
    mid = doc["last_message_mid"]
    conversation = ConversationState(
        page_id=doc["page_id"],
        psid=doc["psid"],
        thread_id=doc["thread_id"],
        first_message_at=doc["first_message_at"],
        last_message_at=doc["last_message_at"],
        message_count=doc["message_count"],
        last_message_key=_key(doc["last_message_key"]),
        last_message_mid=mid,
        last_message_original_text=doc["last_message_text"],
        last_inbound_at=doc["last_inbound_at"],
        last_outbound_at=doc["last_outbound_at"],
        read_watermark=doc["read_watermark"],
        delivered_watermark=doc["delivered_watermark"],
        edits=() if edit is None else ((mid, edit[:3]),),
    )
    return StreamState(
        conversation,
        seq=int(doc["seq"]),
        open=base64.b64decode(doc["open"]),
        sealed=int(doc["sealed"]),
        text_digest=doc["text_digest"],
        edit_digest=None if edit is None else edit[3],
    )


def _legacy(doc: dict[str, Any]) -> Decoded:
    """Carry a record of the unbounded formats over (whole texts, every edit, every digest)."""
    seen = doc["seen"]
    if isinstance(seen, list):
        # The first format: every folded event id without "ev1_". Their digests are a
        # superset of the message digests, which the rules allow (ids never repeat
        # across kinds).
        blob = b"".join(sorted({digest("ev1_" + short) for short in seen}))
    else:
        blob = base64.b64decode(seen)
    full = len(blob) // (CHUNK * DIGEST) * CHUNK * DIGEST
    chunks = tuple(blob[i : i + CHUNK * DIGEST] for i in range(0, full, CHUNK * DIGEST))
    edits: list[tuple[str, Edit]] = []
    for mid, (num, event_id, text) in doc["edits"]:
        edits.append((mid_key(str(mid)), (int(num), str(event_id), *cut(text))))
    mid = None if doc["last_message_mid"] is None else mid_key(doc["last_message_mid"])
    mine = next((e for m, e in edits if m == mid), None)
    thread = doc["thread_id"]
    text, text_sha = cut(doc["last_message_original_text"])
    conversation = ConversationState(
        page_id=doc["page_id"],
        psid=doc["psid"],
        thread_id=None if thread is None else thread_key(thread),
        first_message_at=doc["first_message_at"],
        last_message_at=doc["last_message_at"],
        message_count=doc["message_count"],
        last_message_key=_key(doc["last_message_key"]),
        last_message_mid=mid,
        last_message_original_text=text,
        last_inbound_at=doc["last_inbound_at"],
        last_outbound_at=doc["last_outbound_at"],
        read_watermark=doc["read_watermark"],
        delivered_watermark=doc["delivered_watermark"],
        edits=() if mine is None or mid is None else ((mid, mine[:3]),),
    )
    state = StreamState(
        conversation,
        seq=int(doc["seq"]),
        open=blob[full:],
        sealed=len(chunks),
        text_digest=text_sha,
        edit_digest=None if mine is None else mine[3],
    )
    return Decoded(state, chunks, tuple(edits))


def encode_edit(edit: Edit) -> bytes:
    """Return an edits-table value."""
    return orjson.dumps(edit)


def decode_edit(data: bytes) -> Edit:
    """Return the edit encoded by :func:`encode_edit`. Raises ``ValueError``."""
    try:
        edit = _edit(orjson.loads(data))
    except (TypeError, ValueError) as e:
        raise ValueError(f"not an edit: {e}") from e
    if edit is None:
        raise ValueError("not an edit: null")
    return edit
