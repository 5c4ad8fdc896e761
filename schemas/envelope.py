"""The event envelope: the one record type on ``<prefix>.events``.

A msgspec ``Struct``: its annotations are the one definition of the record's fields, their
order on the wire and their bounds. Reading a record validates it in the same pass as the
JSON parse; :meth:`Envelope.build` checks a new envelope against the same definition.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from convsync.errors import PoisonError
from schemas.event_id import make_event_id
from schemas.kinds import Direction, EventKind, Platform, Source

SCHEMA_VERSION: Final = 1
# The prefix of a guest's ``psid`` (a checkbox or chat plugin user known by ``user_ref``
# only): a PSID is digits, so such a key never collides with one.
USER_REF_PREFIX: Final = "user_ref:"
# The attrs key of an ``unknown`` envelope kept for an item defect (an item whose user
# would be the page itself), with the reason: the materializer dead-letters it.
DEFECT_ATTR: Final = "defect"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Ms = Annotated[int, msgspec.Meta(ge=0)]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One fact about one conversation, as published to ``<prefix>.events``.

    The Kafka key is ``page_id``. ``raw`` keeps the source item exactly as Meta sent it
    (a webhook ``messaging``/``standby`` item or a Graph API message), so nothing Meta
    sent is ever lost, even for kinds the parser does not understand.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Annotated[
        str, msgspec.Meta(pattern=r"^ev1_[0-9a-f]{32}$", description="Deterministic id.")
    ]
    kind: EventKind
    page_id: Annotated[
        Id, msgspec.Meta(description="The Facebook page, or the Instagram account (entry.id).")
    ]
    platform: Annotated[
        Platform,
        msgspec.Meta(description="The inbox: messenger (a page) or instagram (an account)."),
    ] = "messenger"
    psid: Annotated[
        Id,
        msgspec.Meta(
            description=(
                "The user: a page-scoped (or Instagram-scoped) id, or user_ref:<ref> for a "
                "guest known only by a plugin's user_ref."
            )
        ),
    ]
    direction: Annotated[
        Direction | None,
        msgspec.Meta(description="inbound: user -> page; outbound: page -> user."),
    ] = None
    mid: Annotated[
        str | None,
        msgspec.Meta(description="The message id this event is or targets (reaction, edit)."),
    ] = None
    occurred_at: Annotated[
        Ms, msgspec.Meta(description="When it happened, ms since the epoch (UTC).")
    ]
    text: str | None = None
    watermark: Annotated[
        Ms | None, msgspec.Meta(description="delivery/read: everything up to this ms.")
    ] = None
    thread_id: Annotated[
        str | None, msgspec.Meta(description="Graph thread id (t_...) if known.")
    ] = None
    source: Source
    attrs: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="Kind-specific parsed fields (emoji, action, payload, attachments...)."
        ),
    ] = {}
    raw: Annotated[dict[str, Any], msgspec.Meta(description="The source item exactly as received.")]

    @classmethod
    def build(
        cls,
        *,
        kind: EventKind,
        page_id: str,
        psid: str,
        occurred_at: int,
        platform: Platform = "messenger",
        source: Source,
        raw: dict[str, Any],
        direction: Direction | None = None,
        mid: str | None = None,
        text: str | None = None,
        watermark: int | None = None,
        thread_id: str | None = None,
        attrs: dict[str, Any] | None = None,
        detail: str | None = None,
    ) -> Envelope:
        """Return an envelope whose ``event_id`` follows :mod:`schemas.event_id`.

        Raises ``ValueError`` when the kind's id rule lacks a field or a value is not
        what the envelope declares (a type or a bound).
        """
        fields = {
            "event_id": make_event_id(kind, page_id, psid, mid, watermark, occurred_at, detail),
            "kind": kind,
            "page_id": page_id,
            "platform": platform,
            "psid": psid,
            "direction": direction,
            "mid": mid,
            "occurred_at": occurred_at,
            "text": text,
            "watermark": watermark,
            "thread_id": thread_id,
            "source": source,
            "attrs": {} if attrs is None else attrs,
            "raw": raw,
        }
        try:
            # Checked against the annotations above, as reading the record back would
            # (a Struct's own constructor checks nothing).
            return msgspec.convert(fields, cls)
        except msgspec.ValidationError as e:
            raise ValueError(f"not a valid envelope: {e}") from e

    def to_bytes(self) -> bytes:
        """Return the JSON bytes published as the Kafka record value (fields in order)."""
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, value: bytes | None) -> Envelope:
        """Decode a Kafka record value. Raises :class:`PoisonError` on bad bytes."""
        if value is None:
            raise PoisonError("record has no value")
        try:
            return _DECODER.decode(value)
        except msgspec.DecodeError as e:
            # ValidationError is a DecodeError: its text names the field ($.psid).
            raise PoisonError(f"not a valid envelope ({e})") from e
        except UnicodeDecodeError as e:
            # msgspec raises this one, not a DecodeError, for a string that is not UTF-8.
            raise PoisonError(f"not a valid envelope (a string is not UTF-8: {e.reason})") from e
        except RecursionError as e:
            # msgspec nests as deep as Python's recursion limit (~1,000 levels) allows.
            raise PoisonError("not a valid envelope (nested too deep)") from e


_DECODER: Final = msgspec.json.Decoder(Envelope)
_ENCODER: Final = msgspec.json.Encoder()
