"""The conversation change record published on ``<prefix>.conversations``."""

from __future__ import annotations

from typing import Final, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from convsync.errors import PoisonError

CONVERSATION_SCHEMA_VERSION: Final = 1

ChangeKind = Literal[
    "created",
    "message",
    "replied",
    "needs_reply",
    "read",
    "delivered",
    "edited",
    "thread",
]
CHANGE_KINDS: Final[tuple[ChangeKind, ...]] = get_args(ChangeKind)


def conversation_key(page_id: str, psid: str) -> str:
    """Return the Kafka key of a conversation: ``page_id:psid``."""
    return f"{page_id}:{psid}"


class ConversationChange(BaseModel):
    """One change of one conversation: its whole current state and what changed.

    The Kafka key is ``page_id:psid`` and the topic is compacted, so the last record of
    a key is the conversation's current state. ``seq`` starts at 1 and grows by one per
    change of that conversation; a consumer that keeps the greatest ``seq`` per key and
    skips records at or below it sees every change exactly once. The state fields are
    the ``conversations`` read contract of :meth:`schemas.fold.ConversationState.public`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = CONVERSATION_SCHEMA_VERSION
    key: str = Field(min_length=3, description="page_id:psid, the Kafka key.")
    seq: int = Field(ge=1, description="Per-conversation change number, 1, 2, 3...")
    changes: list[ChangeKind] = Field(
        min_length=1,
        description=(
            "What changed: created (first event of the conversation ever seen), message "
            "(a new message, or another copy of one that moved the message times), "
            "replied (the page answered a waiting user), needs_reply (the user wrote after "
            "the page's last answer), read, delivered, edited (last message text), "
            "thread (thread id learned)."
        ),
    )
    event_id: str = Field(description="The event that caused this change.")
    event_kind: str = Field(description="That event's kind.")
    occurred_at: int = Field(ge=0, description="That event's time, ms since the epoch.")
    page_id: str
    psid: str
    thread_id: str | None
    first_message_at: int | None = Field(description="ms since the epoch")
    last_message_at: int | None = Field(description="ms since the epoch")
    message_count: int = Field(ge=0)
    last_message_text: str | None
    last_message_text_truncated: bool = Field(
        default=False,
        description=(
            "last_message_text was cut to its first 32 KiB of UTF-8 (the stream keeps "
            "texts bounded; Postgres keeps them whole)."
        ),
    )
    last_inbound_at: int | None = Field(description="ms since the epoch")
    last_outbound_at: int | None = Field(description="ms since the epoch")
    needs_reply: bool
    read_watermark: int | None = Field(description="ms since the epoch")
    delivered_watermark: int | None = Field(description="ms since the epoch")

    def to_bytes(self) -> bytes:
        """Return the JSON bytes published as the Kafka record value."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, value: bytes | None) -> ConversationChange:
        """Decode a Kafka record value. Raises :class:`PoisonError` on bad bytes."""
        if value is None:
            raise PoisonError("record has no value")
        try:
            return cls.model_validate_json(value)
        except ValidationError as e:
            raise PoisonError(f"not a valid conversation change ({e.error_count()} errors)") from e
