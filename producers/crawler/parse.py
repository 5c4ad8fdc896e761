"""Graph API conversations and messages (pydantic, at the edge) -> todos and envelopes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producers.crawler.urls import GRAPH_ID
from schemas.crawl import ConversationTodo
from schemas.envelope import Envelope
from schemas.kinds import Direction, Platform
from schemas.nesting import deeper_than

# The envelope's limit on a user id.
MAX_USER_ID: Final = 64


class GraphParticipant(BaseModel):
    """A participant, sender or recipient (Messenger names people, Instagram gives a
    ``username``)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    name: str | None = None
    username: str | None = None


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


def conversation_todo(
    item: Any, page_id: str, *, also_not: str | None = None
) -> ConversationTodo | str:
    """Return the todo of a listed conversation, or the reason it is skipped.

    The user is the first participant that is neither ``page_id`` (the page, or the
    Instagram account) nor ``also_not`` (an Instagram account's linked page).

    The thread id goes into a URL path (``/{thread}/messages``) and the user id into
    every event, so both must be Graph ids (:data:`GRAPH_ID`): anything else is skipped
    as ``invalid_thread_id`` or ``invalid_user_id``, never put in a URL.
    """
    try:
        conv = GraphConversation.model_validate(item)
    except ValidationError:
        return "invalid_conversation"
    if not GRAPH_ID.fullmatch(conv.id):
        return "invalid_thread_id"
    users = [p.id for p in conv.participants.data if p.id not in (page_id, also_not)]
    if not users:
        return "no_user_participant"
    if not GRAPH_ID.fullmatch(users[0]) or len(users[0]) > MAX_USER_ID:
        return "invalid_user_id"
    return ConversationTodo(
        thread_id=conv.id,
        psid=users[0],
        updated_at=_ms(conv.updated_time),
        message_count=conv.message_count,
    )


class _Message(NamedTuple):
    """What the crawler uses of a Graph message."""

    mid: str
    created_ms: int
    sender_id: str | None
    text: str | None
    attachments: dict[str, Any] | None


# The Graph API's time format: 2026-11-28T12:34:56+0000.
_GRAPH_TIME: Final = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)([+-])(\d\d)(\d\d)")
_UTC: Final = UTC


def _person_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    pid, name, username = value.get("id"), value.get("name"), value.get("username")
    return (
        isinstance(pid, str)
        and bool(pid)
        and (name is None or isinstance(name, str))
        and (username is None or isinstance(username, str))
    )


def _fast_message(item: dict[str, Any]) -> _Message | None:
    """Return the message when it has exactly the plain shape Graph sends, else None.

    None means "let pydantic decide"; for anything returned, validating with
    :class:`GraphMessage` gives the same values (a property test holds the two
    together). This path exists because validation was the crawler's largest cost.
    """
    mid, created, sender = item.get("id"), item.get("created_time"), item.get("from")
    text, attachments, to = item.get("message"), item.get("attachments"), item.get("to")
    if not (isinstance(mid, str) and mid and isinstance(created, str)) or "sender" in item:
        return None
    if not (sender is None or _person_ok(sender)):
        return None
    if not (text is None or isinstance(text, str)):
        return None
    if not (attachments is None or isinstance(attachments, dict)):
        return None
    if to is not None:
        data = to.get("data", []) if isinstance(to, dict) else None
        if not (isinstance(data, list) and all(_person_ok(p) for p in data)):
            return None
    m = _GRAPH_TIME.fullmatch(created)
    if m is None:
        return None
    y, mo, d, h, mi, sec, sign, oh, om = m.groups()
    if int(om) >= 60:
        return None
    try:
        offset = timedelta(hours=int(oh), minutes=int(om))
        tz = _UTC if not offset else timezone(-offset if sign == "-" else offset)
        when = datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), tzinfo=tz)
    except ValueError:
        return None
    sender_id = sender["id"] if sender is not None else None
    return _Message(mid, _ms(when), sender_id, text, attachments)


def _message(item: Any) -> _Message | None:
    """Return the message (fast path, else pydantic), or None when it is invalid."""
    if isinstance(item, dict):
        fast = _fast_message(item)
        if fast is not None:
            return fast
    try:
        msg = GraphMessage.model_validate(item)
    except ValidationError:
        return None
    sender_id = msg.sender.id if msg.sender is not None else None
    return _Message(msg.id, _ms(msg.created_time), sender_id, msg.message, msg.attachments)


def message_time(item: Any) -> int | None:
    """Return the ``created_time`` of a raw message in ms, or None when unreadable."""
    msg = _message(item)
    return None if msg is None else msg.created_ms


def message_envelope(
    item: Any, *, page_id: str, todo: ConversationTodo, platform: Platform = "messenger"
) -> Envelope | str:
    """Return the message envelope of a Graph message, or the reason it is skipped.

    A message without details (no ``from``) is still kept: its id, time and thread are
    facts; direction and text stay unknown (``attrs.details`` is false). A message nested
    deeper than :data:`schemas.nesting.MAX_DEPTH` is skipped as ``too_deep``. What a
    message holds besides its text goes to ``attrs`` (:func:`content_attrs`), so a shared
    link or a sticker is not an empty message. ``page_id`` is the page, or for an
    Instagram crawl the account (what its webhooks name ``entry.id``): the event id is
    then the webhook copy's.
    """
    if not isinstance(item, dict):
        return "invalid_message"
    msg = _message(item)
    if msg is None:
        return "invalid_message"
    if deeper_than(item):
        # Its envelope could not be written (orjson stops at ~254 levels: the worker
        # stopped on it, and again after every restart) or read back (pydantic, ~200).
        return "too_deep"
    direction: Direction | None = None
    if msg.sender_id is not None:
        direction = "outbound" if msg.sender_id == page_id else "inbound"
    attrs: dict[str, Any] = {"details": msg.sender_id is not None}
    if msg.attachments is not None:
        attrs["attachments"] = msg.attachments.get("data", msg.attachments)
    attrs.update(content_attrs(item))
    try:
        return Envelope.build(
            kind="message",
            page_id=page_id,
            platform=platform,
            psid=todo.psid,
            occurred_at=msg.created_ms,
            source="crawler",
            raw=item,
            direction=direction,
            mid=msg.mid,
            text=msg.text or None,
            thread_id=todo.thread_id,
            attrs=attrs,
        )
    except (ValueError, ValidationError):
        return "invalid_message"


def _edge_data(value: Any) -> list[Any] | None:
    """Return the items of a Graph edge (``{"data": [...]}``; a bare list is read too)."""
    if isinstance(value, dict):
        value = value.get("data")
    return value if isinstance(value, list) else None


def content_attrs(item: dict[str, Any]) -> dict[str, Any]:
    """Return what a Graph message holds besides its text and attachments, for ``attrs``.

    ``shares``: the shared links and posts (Graph's ``shares`` edge, each share's
    ``link``, ``name``, ``description``, ``id`` and ``template`` as sent); ``sticker``:
    the sticker's image URL; ``tags``: the tag names (``inbox``, ``read``, ``source:...``).
    A field of an unexpected shape is left in ``raw`` only (the envelope keeps the item).
    """
    out: dict[str, Any] = {}
    shares = _edge_data(item.get("shares"))
    if shares:
        kept = [
            {k: v for k, v in s.items() if k in _SHARE_KEYS and v is not None}
            for s in shares
            if isinstance(s, dict)
        ]
        if any(kept):
            out["shares"] = [s for s in kept if s]
    sticker = item.get("sticker")
    if isinstance(sticker, str) and sticker:
        out["sticker"] = sticker
    tags = _edge_data(item.get("tags"))
    if tags:
        names = [t.get("name") if isinstance(t, dict) else t for t in tags]
        kept_names = [n for n in names if isinstance(n, str)]
        if kept_names:
            out["tags"] = kept_names
    return out


# The fields of a share kept in ``attrs.shares``.
_SHARE_KEYS: Final = ("link", "name", "description", "id", "template")
