"""Copies of one event: how they order and how they merge into one stored row.

The same event id can reach a conversation more than once with different content: the
webhook's copy of a message (the time in ms, no thread id) and the crawler's (Graph's
whole seconds, the thread id, past Graph's detail window no sender and no text), Meta's
retries, or conflicting copies in bad data. Every projection keeps one row per event id
*and conversation* (``(event_id, psid)``): the merge of that conversation's copies, a
function of the *set* of copies, so any order and any batching give the same row.

Field by field (each rule is a maximum, so merging is commutative, associative and
idempotent, and a stored row merged with a new copy is the merge of all of them):

* ``occurred_at``: the greatest (the webhook's milliseconds over Graph's truncated
  seconds);
* ``num_edit`` (edits): the greatest;
* ``text``: the text of the copy that the fold reads the text with. For a message, the
  copy with the greatest time; for an edit, the one with the greatest ``num_edit``; among
  those (and for every other kind, among all copies) a text over none, then
  :func:`text_rank`. So a message's text follows its time, as the conversation's last
  message does: a stream that keeps only its last message can tell which copy's text
  wins without remembering the others (a "known text over any time" rule cannot: the
  copy that makes a message the last one may come after the copy that had the text);
* ``direction``: a known direction over none, then the greatest;
* ``thread_id``: the greatest non-null one;
* everything else (source, mid, watermark, attrs, payload and where the copy was read):
  the copy that is greatest by :func:`rest_rank`: the webhook's copy over the crawler's
  over an imported one (``source = import``), then the greater :func:`copy_digest` (the
  sha256 of the copy's canonical JSON), so no two different copies rank equal. Meta's
  own copies rank first: the webhook's raw item is what Meta sent, the crawler's what
  Graph answers, while an import is another system's re-encoding of it (its fields
  were chosen by an export query), so it fills a row only until Meta's copy arrives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

import msgspec

from schemas.envelope import Envelope
from schemas.event_id import canonical_json

# Texts are ordered by code point up to this many bytes of UTF-8; texts that share their
# first TEXT_CAP bytes are ordered by digest. A stream that keeps texts cut to this cap
# (streams/) can then order any two texts exactly from what it kept.
TEXT_CAP: Final = 32 * 1024

TextRank = tuple[bool, str, str]
RowKey = tuple[str, str]  # (event_id, psid)


def cut_text(text: str, cap: int = TEXT_CAP) -> str:
    """Return the longest prefix of ``text`` whose UTF-8 encoding has at most ``cap``
    bytes. Cutting keeps order: ``a <= b`` implies ``cut_text(a) <= cut_text(b)``."""
    if len(text) <= cap // 4:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= cap:
        return text
    # Back up to the first byte of a character: never cut one in two.
    end = cap
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass")


def text_digest(text: str) -> str:
    """Return the sha256 hex of ``text``: the order of texts that share their first cut."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def text_rank(text: str | None, digest: str | None = None) -> TextRank:
    """Order of two texts of copies of one fact: a text beats none, then code point order.

    Code point order holds for every pair except texts longer than TEXT_CAP bytes that
    share their first TEXT_CAP bytes: those are ordered by :func:`text_digest`.
    ``digest``: the text's digest when ``text`` is already cut (what a stream keeps).
    """
    if text is None:
        return (False, "", "")
    cut = cut_text(text)
    if digest is not None:
        return (True, cut, digest)
    return (True, cut, "" if cut is text or len(cut) == len(text) else text_digest(text))


def edit_number(event: Envelope) -> int:
    """Return an edit event's ``num_edit`` (0 when Meta sent none)."""
    value = event.attrs.get("num_edit", 0)
    return value if isinstance(value, int) else 0


def copy_digest(event: Envelope) -> str:
    """Return the sha256 (32 hex digits) of the copy's canonical JSON: every field of the
    envelope, object keys sorted. Two copies with any difference differ here."""
    # The Struct's fields as they are (nested values are plain JSON values already): the
    # same dict as its published JSON read back, without encoding and decoding it.
    fields: dict[str, Any] = msgspec.structs.asdict(event)
    return hashlib.sha256(canonical_json(fields)).hexdigest()[:32]


RestRank = tuple[int, str]
# The rank of each source for the fields that are not merged (higher wins).
SOURCE_RANK: Final[dict[str, int]] = {"webhook": 2, "crawler": 1, "import": 0}


def rest_rank(source: str, digest: str | None) -> RestRank:
    """Order of copies for the fields that are not merged: webhook, crawler, import,
    then digest.

    ``digest`` is None for rows stored before digests were kept: they rank below any copy
    of the same source. An unknown source ranks below every known one.
    """
    return (SOURCE_RANK.get(source, -1), digest or "")


def text_key(kind: str, occurred_at: int, num_edit: int | None) -> int:
    """What a copy's text goes with: its time (message), its edit number (edit), or
    nothing (0) for the other kinds."""
    if kind == "message":
        return occurred_at
    if kind == "edit":
        return num_edit or 0
    return 0


def _max_known(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


@dataclass(frozen=True, slots=True)
class Merged:
    """The fields merged field by field (see the module docstring)."""

    occurred_at: int
    text: str | None
    direction: str | None
    thread_id: str | None
    num_edit: int | None

    def merge(self, other: Merged, kind: str) -> Merged:
        """Return the merge of two merges of copies of one (event id, conversation)."""
        ka = text_key(kind, self.occurred_at, self.num_edit)
        kb = text_key(kind, other.occurred_at, other.num_edit)
        if ka != kb:
            text = self.text if ka > kb else other.text
        elif self.text == other.text or text_rank(self.text) >= text_rank(other.text):
            text = self.text
        else:
            text = other.text
        return Merged(
            occurred_at=max(self.occurred_at, other.occurred_at),
            text=text,
            direction=_max_known(self.direction, other.direction),
            thread_id=_max_known(self.thread_id, other.thread_id),
            num_edit=None
            if self.num_edit is None and other.num_edit is None
            else max(self.num_edit or 0, other.num_edit or 0),
        )


def merged_of(event: Envelope) -> Merged:
    """Return the merged fields of a single copy."""
    return Merged(
        occurred_at=event.occurred_at,
        text=event.text,
        direction=event.direction,
        thread_id=event.thread_id,
        num_edit=edit_number(event) if event.kind == "edit" else None,
    )


@dataclass(frozen=True, slots=True)
class EventRow:
    """The stored row of one event id in one conversation: the merge of its copies.

    ``copy`` is the copy whose remaining fields (source, mid, watermark, attrs, raw) the
    row keeps, ``digest`` its :func:`copy_digest`.
    """

    merged: Merged
    copy: Envelope
    digest: str

    @property
    def key(self) -> RowKey:
        return (self.copy.event_id, self.copy.psid)

    def add(self, event: Envelope, digest: str | None = None) -> EventRow:
        """Return this row with one more copy (of the same event id and conversation)."""
        if (event.event_id, event.psid) != self.key:
            raise ValueError("a copy of another event or conversation")
        other = digest or copy_digest(event)
        merged = self.merged.merge(merged_of(event), event.kind)
        if rest_rank(event.source, other) > rest_rank(self.copy.source, self.digest):
            return EventRow(merged, event, other)
        return replace(self, merged=merged) if merged != self.merged else self

    def fields(self) -> dict[str, Any]:
        """Return the row as the ``events`` columns hold it (times in ms)."""
        c, m = self.copy, self.merged
        return {
            "event_id": c.event_id,
            "page_id": c.page_id,
            "psid": c.psid,
            "kind": c.kind,
            "mid": c.mid,
            "occurred_at": m.occurred_at,
            "direction": m.direction,
            "text": m.text,
            "watermark": c.watermark,
            "thread_id": m.thread_id,
            "source": c.source,
            "attrs": c.attrs,
            "payload": c.raw,
            "num_edit": m.num_edit,
            "copy_digest": self.digest,
        }


def row_of(event: Envelope) -> EventRow:
    """Return the row of a single copy."""
    return EventRow(merged_of(event), event, copy_digest(event))


def merged_rows(copies: Iterable[Envelope]) -> dict[RowKey, EventRow]:
    """Return the row of every (event id, conversation) in ``copies``: the reference of
    what the materializer's ``events`` table holds."""
    out: dict[RowKey, EventRow] = {}
    for event in copies:
        key = (event.event_id, event.psid)
        row = out.get(key)
        out[key] = row_of(event) if row is None else row.add(event)
    return out
