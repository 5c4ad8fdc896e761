"""Turn Kafka records into staging rows for Postgres, or into poison with a reason."""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from convsync.errors import PoisonError
from schemas.copies import copy_digest, edit_number
from schemas.envelope import DEFECT_ATTR, USER_REF_PREFIX, Envelope

# Postgres stores timestamps far beyond this, but a time after year 9999 is no fact
# Meta can report: it is a broken producer, so the record is poison, not a batch killer.
MAX_MS: Final = 253_402_300_799_999

STAGE_COLUMNS: Final = (
    "seq",
    "event_id",
    "page_id",
    "psid",
    "kind",
    "mid",
    "occurred_ms",
    "direction",
    "text",
    "watermark_ms",
    "thread_id",
    "source",
    "attrs",
    "payload",
    "topic",
    "partition",
    "offset",
    "num_edit",
    "copy_digest",
    "platform",
    # A guest's user_ref when the row also names a PSID (the link for user_refs), else None.
    "user_ref",
)

StageRow = tuple[Any, ...]


class Position(NamedTuple):
    """Where a record sits in Kafka (a NamedTuple: one is made per record, and a frozen
    dataclass's __init__ cost ~1 us more each)."""

    topic: str
    partition: int
    offset: int


def _text(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        raise PoisonError(f"{field} contains a NUL character, which Postgres cannot store")
    if not value.isascii():
        # Only non-ASCII text can hold a lone surrogate; most ids and texts skip this.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PoisonError(f"{field} is not valid UTF-8 text: {e.reason}") from e
    return value


def _json(value: dict[str, Any], field: str) -> str:
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError as e:
        raise PoisonError(f"{field} cannot be encoded as JSON: {e}") from e
    if b"\\u0000" in data:
        raise PoisonError(f"{field} contains a NUL character, which Postgres cannot store")
    return data.decode("utf-8")


def _ms(value: int | None, field: str) -> int | None:
    if value is not None and value > MAX_MS:
        raise PoisonError(f"{field}={value} ms is after year 9999")
    return value


def _user_ref(e: Envelope) -> str | None:
    ref = e.attrs.get("user_ref")
    if type(ref) is not str or not ref or e.psid.startswith(USER_REF_PREFIX):
        return None
    return _text(ref, "attrs.user_ref")


def stage_row(envelope: Envelope, pos: Position, seq: int) -> StageRow:
    """Return the staging row of a decoded envelope (columns in ``STAGE_COLUMNS`` order).

    Raises :class:`PoisonError` for values Postgres cannot store (NUL characters, lone
    surrogates, times past year 9999), so one such record never blocks a batch, and for
    an item defect (``attrs.defect``: see ``producers/webhook/mapping.py``).
    """
    e = envelope
    if e.kind == "unknown" and DEFECT_ATTR in e.attrs:
        # An item that is no fact of any conversation (its user would be the page
        # itself), kept by a producer with no dead-letter path of its own: dead-lettered
        # here with its reason, never a conversation row.
        raise PoisonError(f"item defect: {e.attrs[DEFECT_ATTR]}")
    return (
        seq,
        e.event_id,
        _text(e.page_id, "page_id"),
        _text(e.psid, "psid"),
        e.kind,
        _text(e.mid, "mid"),
        _ms(e.occurred_at, "occurred_at"),
        e.direction,
        _text(e.text, "text"),
        _ms(e.watermark, "watermark"),
        _text(e.thread_id, "thread_id"),
        e.source,
        _json(e.attrs, "attrs"),
        _json(e.raw, "raw"),
        pos.topic,
        pos.partition,
        pos.offset,
        edit_number(e) if e.kind == "edit" else None,
        # Which copy's source, payload and attrs a row keeps when copies differ.
        copy_digest(e),
        e.platform,
        _user_ref(e),
    )


def decode(value: bytes | None, pos: Position, seq: int) -> StageRow:
    """Return the staging row of a Kafka record value. Raises :class:`PoisonError`."""
    return stage_row(Envelope.from_bytes(value), pos, seq)
