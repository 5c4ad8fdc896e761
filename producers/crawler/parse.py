"""Graph API conversations and messages (pydantic, at the edge) -> todos and envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.crawl import ConversationTodo
from schemas.envelope import Envelope
from schemas.kinds import Direction


class GraphParticipant(BaseModel):
    """A participant, sender or recipient."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    name: str | None = None


class _People(BaseModel):
    model_config = ConfigDict(extra="allow")

    data: list[GraphParticipant] = Field(default_factory=list)


class GraphConversation(BaseModel):
    """An item of ``/{page-id}/conversations``."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    updated_time: datetime
    message_count: int = Field(default=0, ge=0)
    participants: _People = Field(default_factory=_People)


class GraphMessage(BaseModel):
    """An item of ``/{conversation-id}/messages``; old ones may lack every detail."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1)
    created_time: datetime
    sender: GraphParticipant | None = Field(default=None, alias="from")
    to: _People | None = None
    message: str | None = None
    attachments: dict[str, Any] | None = None


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def conversation_todo(item: Any, page_id: str) -> ConversationTodo | str:
    """Return the todo of a listed conversation, or the reason it is skipped."""
    try:
        conv = GraphConversation.model_validate(item)
    except ValidationError:
        return "invalid_conversation"
    users = [p.id for p in conv.participants.data if p.id != page_id]
    if not users:
        return "no_user_participant"
    return ConversationTodo(
        thread_id=conv.id,
        psid=users[0],
        updated_at=_ms(conv.updated_time),
        message_count=conv.message_count,
    )


def message_time(item: Any) -> int | None:
    """Return the ``created_time`` of a raw message in ms, or None when unreadable."""
    try:
        return _ms(GraphMessage.model_validate(item).created_time)
    except ValidationError:
        return None


def message_envelope(item: Any, *, page_id: str, todo: ConversationTodo) -> Envelope | str:
    """Return the message envelope of a Graph message, or the reason it is skipped.

    A message without details (no ``from``) is still kept: its id, time and thread are
    facts; direction and text stay unknown (``attrs.details`` is false).
    """
    if not isinstance(item, dict):
        return "invalid_message"
    try:
        msg = GraphMessage.model_validate(item)
    except ValidationError:
        return "invalid_message"
    direction: Direction | None = None
    if msg.sender is not None:
        direction = "outbound" if msg.sender.id == page_id else "inbound"
    attrs: dict[str, Any] = {"details": msg.sender is not None}
    if msg.attachments is not None:
        attrs["attachments"] = msg.attachments.get("data", msg.attachments)
    try:
        return Envelope.build(
            kind="message",
            page_id=page_id,
            psid=todo.psid,
            occurred_at=_ms(msg.created_time),
            source="crawler",
            raw=item,
            direction=direction,
            mid=msg.id,
            text=msg.message or None,
            thread_id=todo.thread_id,
            attrs=attrs,
        )
    except (ValueError, ValidationError):
        return "invalid_message"
