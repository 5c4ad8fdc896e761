"""The event envelope: the one record type on ``<prefix>.events``."""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from convsync.errors import PoisonError
from schemas.event_id import make_event_id
from schemas.kinds import EVENT_KINDS, Direction, EventKind, Source

SCHEMA_VERSION: Final = 1
_KINDS: Final = frozenset(EVENT_KINDS)
_SOURCES: Final = frozenset(get_args(Source))
_DIRECTIONS: Final = frozenset({None, *get_args(Direction)})
# orjson raises TypeError on these instead of serializing them its own way, so anything
# not plain JSON takes pydantic's path and the bytes never depend on which path ran.
PLAIN_JSON: Final = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_set = object.__setattr__
# The fields build() passes; validation records the same set (schema_version defaults).
_PASSED: Final = frozenset(
    {"event_id", "kind", "page_id", "psid", "direction", "mid", "occurred_at", "text"}
    | {"watermark", "thread_id", "source", "attrs", "raw"}
)


def _plain_str(value: Any, limit: int | None = None) -> bool:
    return type(value) is str and (limit is None or 0 < len(value) <= limit)


def _plain_ms(value: Any) -> bool:
    return type(value) is int and value >= 0


class Envelope(BaseModel):
    """One fact about one conversation, as published to ``<prefix>.events``.

    The Kafka key is ``page_id``. ``raw`` keeps the source item exactly as Meta sent it
    (a webhook ``messaging``/``standby`` item or a Graph API message), so nothing Meta
    sent is ever lost, even for kinds the parser does not understand.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(pattern=r"^ev1_[0-9a-f]{32}$", description="Deterministic id.")
    kind: EventKind
    page_id: str = Field(min_length=1, max_length=64)
    psid: str = Field(min_length=1, max_length=64, description="The user's page-scoped id.")
    direction: Direction | None = Field(
        default=None, description="inbound: user -> page; outbound: page -> user."
    )
    mid: str | None = Field(
        default=None, description="The message id this event is or targets (reaction, edit)."
    )
    occurred_at: int = Field(ge=0, description="When it happened, ms since the epoch (UTC).")
    text: str | None = None
    watermark: int | None = Field(
        default=None, ge=0, description="delivery/read: everything up to this ms."
    )
    thread_id: str | None = Field(default=None, description="Graph thread id (t_...) if known.")
    source: Source
    attrs: dict[str, Any] = Field(
        default_factory=dict,
        description="Kind-specific parsed fields (emoji, action, payload, attachments...).",
    )
    raw: dict[str, Any] = Field(description="The source item exactly as received.")

    @classmethod
    def build(
        cls,
        *,
        kind: EventKind,
        page_id: str,
        psid: str,
        occurred_at: int,
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

        Raises ``ValueError`` when the kind's id rule lacks a field.
        """
        event_id = make_event_id(
            kind,
            page_id=page_id,
            psid=psid,
            mid=mid,
            watermark=watermark,
            occurred_at=occurred_at,
            detail=detail,
        )
        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id,
            "kind": kind,
            "page_id": str(page_id),
            "psid": str(psid),
            "direction": direction,
            "mid": mid,
            "occurred_at": occurred_at,
            "text": text,
            "watermark": watermark,
            "thread_id": thread_id,
            "source": source,
            "attrs": attrs or {},
            "raw": raw,
        }
        # Fast path: values of exactly the types and bounds the model declares are what
        # validation would return unchanged, so they skip it (~3x cheaper per event).
        # Anything else (a subclass, a bool for an int, an out-of-range value) is validated
        # as before and raises ValidationError there.
        if (
            kind in _KINDS
            and source in _SOURCES
            and direction in _DIRECTIONS
            and _plain_str(fields["page_id"], 64)
            and _plain_str(fields["psid"], 64)
            and _plain_ms(occurred_at)
            and (watermark is None or _plain_ms(watermark))
            and (mid is None or _plain_str(mid))
            and (text is None or _plain_str(text))
            and (thread_id is None or _plain_str(thread_id))
            and type(fields["attrs"]) is dict
            and type(raw) is dict
        ):
            # What model_construct sets, without its per-field default and alias handling.
            env = cls.__new__(cls)
            _set(env, "__dict__", fields)
            _set(env, "__pydantic_fields_set__", set(_PASSED))
            _set(env, "__pydantic_extra__", None)
            _set(env, "__pydantic_private__", None)
            return env
        del fields["schema_version"]
        return cls(**fields)

    def to_bytes(self) -> bytes:
        """Return the JSON bytes published as the Kafka record value."""
        try:
            # Field order and values equal model_dump(mode="json") when all are plain JSON.
            return orjson.dumps(self.__dict__, option=PLAIN_JSON)
        except TypeError:
            return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, value: bytes | None) -> Envelope:
        """Decode a Kafka record value. Raises :class:`PoisonError` on bad bytes."""
        if value is None:
            raise PoisonError("record has no value")
        try:
            return cls.model_validate_json(value)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "record"
            raise PoisonError(
                f"not a valid envelope ({e.error_count()} errors; {where}: {first['msg']})"
            ) from e
