"""Webhook ``messaging``/``standby`` items -> envelopes, one per event, every kind.

The one definition of what an item becomes. :data:`KINDS` is the table of kinds: the
item field that names a kind, the kind, and the function that reads it; a new kind, or
a platform's variant of one, is a row and a reader. Ids follow :mod:`schemas.event_id`:
a reader's ``detail`` is the one the rule names for its kind. An item that cannot be
read as its kind (a field missing or of the wrong type) becomes kind ``unknown`` with the
reason in ``attrs``: it is never dropped, and its raw JSON always travels in ``raw``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

import msgspec

from producers.webhook.payload import Entry
from schemas.envelope import Envelope
from schemas.event_id import detail_digest, make_event_id
from schemas.kinds import Direction, EventKind

log = logging.getLogger(__name__)

Item = dict[str, Any]
# The user of an item that names none (a malformed item, ``app_roles``): still stored.
NO_PSID: Final = "_"
HANDOVER_ACTIONS: Final = {
    "pass_thread_control": "pass",
    "take_thread_control": "take",
    "request_thread_control": "request",
}
_MAX_MS: Final = 2**53


class ItemError(ValueError):
    """An item lacks a field its kind needs; it is stored as ``unknown`` instead."""


class Fact(msgspec.Struct, frozen=True, gc=False):
    """What a reader found in an item: the envelope's fields that vary by kind."""

    kind: EventKind
    psid: str
    attrs: dict[str, Any]
    direction: Direction | None = None
    mid: str | None = None
    text: str | None = None
    watermark: int | None = None
    # None: the item's ``timestamp``, else its entry's time.
    occurred_at: int | None = None
    detail: str | None = None


# A reader gets the item, its kind's object (``item[key]``) and the page id.
Reader = Callable[[Item, dict[str, Any], str], Fact]


def ms(value: Any) -> int | None:
    """Return ``value`` when it is a time in ms the envelope can hold, else None."""
    if type(value) is int and 0 <= value < _MAX_MS:
        return value
    return None


def _ident(value: Any) -> str | None:
    if type(value) is int:
        value = str(value)
    if type(value) is str and 0 < len(value) <= 64:
        return value
    return None


def _party(item: Item, side: str) -> str | None:
    who = item.get(side)
    if type(who) is not dict:
        return None
    value = who.get("id")
    if type(value) is int:
        value = str(value)
    return value if type(value) is str and 0 < len(value) <= 64 else None


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if type(value) is str and value else None


def _need(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if type(value) is str and value:
        return value
    raise ItemError(f"{key} missing")


def _user(item: Item) -> str:
    psid = _party(item, "sender")
    if psid is None:
        raise ItemError("sender.id missing")
    return psid


def _attachments(message: dict[str, Any]) -> list[dict[str, Any]]:
    attachments = message.get("attachments")
    if type(attachments) is not list:
        return []
    out = []
    for att in attachments:
        if type(att) is not dict:
            continue
        raw_payload = att.get("payload")
        payload: dict[str, Any] = raw_payload if type(raw_payload) is dict else {}
        summary = {
            "type": att.get("type"),
            "url": payload.get("url") or att.get("url"),
            "title": payload.get("title") or att.get("title"),
        }
        if payload.get("sticker_id") is not None:
            summary["sticker_id"] = payload["sticker_id"]
        out.append({k: v for k, v in summary.items() if v is not None})
    return out


def _message(item: Item, message: dict[str, Any], page_id: str) -> Fact:
    mid = _need(message, "mid")
    attrs: dict[str, Any] = {}
    direction: Direction
    if message.get("is_echo") is True:
        # The page sent it: the user is the recipient.
        psid = _party(item, "recipient")
        if psid is None:
            raise ItemError("recipient.id missing on echo")
        direction = "outbound"
        attrs["is_echo"] = True
        for key in ("app_id", "metadata"):
            if message.get(key) is not None:
                attrs[key] = message[key]
    else:
        psid = _user(item)
        direction = "inbound"
    quick_reply = message.get("quick_reply")
    if type(quick_reply) is dict and quick_reply.get("payload") is not None:
        attrs["quick_reply_payload"] = quick_reply["payload"]
    reply_to = message.get("reply_to")
    if type(reply_to) is dict and reply_to.get("mid") is not None:
        attrs["reply_to_mid"] = reply_to["mid"]
    if "attachments" in message:
        attachments = _attachments(message)
        if attachments:
            attrs["attachments"] = attachments
    text = message.get("text")
    return Fact("message", psid, attrs, direction, mid, text if type(text) is str else None)


def _watermarked(kind: EventKind) -> Reader:
    def read(item: Item, body: dict[str, Any], page_id: str) -> Fact:
        watermark = ms(body.get("watermark"))
        if watermark is None:
            raise ItemError("watermark missing")
        attrs: dict[str, Any] = {}
        mids = body.get("mids")
        if type(mids) is list:
            attrs["mids"] = [m for m in mids if type(m) is str]
        # Meta's delivery items may carry no timestamp of their own.
        occurred_at = ms(item.get("timestamp")) or watermark
        return Fact(kind, _user(item), attrs, None, None, None, watermark, occurred_at)

    return read


def _reaction(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    action = _str(body, "action") or ""
    emoji = _str(body, "emoji") or ""
    psid = _user(item)
    attrs = {"action": action, "emoji": emoji}
    if body.get("reaction") is not None:
        attrs["reaction"] = body["reaction"]
    mid = _need(body, "mid")
    return Fact("reaction", psid, attrs, "inbound", mid, detail=f"{action}:{emoji}")


def _edit(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    num_edit = body.get("num_edit")
    text = body.get("text")
    return Fact(
        "edit",
        _user(item),
        {"num_edit": num_edit} if num_edit is not None else {},
        "inbound",
        _need(body, "mid"),
        text if type(text) is str else None,
        detail=str(num_edit) if num_edit is not None else None,
    )


def _postback(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    payload = body.get("payload")
    title = body.get("title")
    return Fact(
        "postback",
        _user(item),
        _present(body, ("title", "payload", "referral")),
        "inbound",
        _str(body, "mid"),
        title if type(title) is str else None,
        detail=payload if type(payload) is str else None,
    )


def _referral(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    psid = _user(item)
    attrs = _present(body, ("ref", "source", "type", "ad_id", "referer_uri"))
    return Fact("referral", psid, attrs, "inbound", detail=detail_digest(item))


def _handover(key: str) -> Reader:
    action = HANDOVER_ACTIONS[key]

    def read(item: Item, body: dict[str, Any], page_id: str) -> Fact:
        attrs: dict[str, Any] = {**body, "action": action}
        return Fact("handover", _user(item), attrs, detail=detail_digest(item))

    return read


# Opt-in fields copied to attrs; tokens stay in ``raw`` only, never copied anywhere else.
_OPTIN_ATTRS: Final = (
    "type",
    "ref",
    "payload",
    "user_ref",
    "title",
    "notification_messages_frequency",
)


def _optin(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    sender = item.get("sender")
    # The checkbox plugin's opt-in names the user by user_ref, not by a PSID.
    psid = (
        _party(item, "sender")
        or (_ident(sender.get("user_ref")) if type(sender) is dict else None)
        or _ident(body.get("user_ref"))
    )
    if psid is None:
        raise ItemError("no sender id or user_ref")
    return Fact("optin", psid, _present(body, _OPTIN_ATTRS), detail=detail_digest(item))


def _present(body: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: body[k] for k in keys if body.get(k) is not None}


class Kind(NamedTuple):
    """One row of the table: the item field naming the kind, the kind, its reader."""

    key: str
    kind: EventKind
    read: Reader


# When an item carries several of these fields, the first row wins: ``message`` first,
# since edits and reactions never carry it.
KINDS: Final[tuple[Kind, ...]] = (
    Kind("message", "message", _message),
    Kind("message_edit", "edit", _edit),
    Kind("reaction", "reaction", _reaction),
    Kind("delivery", "delivery", _watermarked("delivery")),
    Kind("read", "read", _watermarked("read")),
    Kind("postback", "postback", _postback),
    Kind("pass_thread_control", "handover", _handover("pass_thread_control")),
    Kind("take_thread_control", "handover", _handover("take_thread_control")),
    Kind("request_thread_control", "handover", _handover("request_thread_control")),
    Kind("optin", "optin", _optin),
    Kind("referral", "referral", _referral),
)
_RANK: Final = {row.key: n for n, row in enumerate(KINDS)}
_READ: Final = {row.key: row.read for row in KINDS}
_KEYS: Final = frozenset(_RANK)


def _unknown(item: Item, page_id: str, attrs: dict[str, Any]) -> Fact:
    # The user is whichever party is not the page.
    parties = (_party(item, "sender"), _party(item, "recipient"))
    psid = next((p for p in parties if p is not None and p != page_id), NO_PSID)
    return Fact("unknown", psid, attrs, detail=detail_digest(item))


def read_item(item: Item, page_id: str) -> Fact:
    """Return what ``item`` is by :data:`KINDS`; never raises for bad items."""
    present = _KEYS.intersection(item)
    if not present:
        return _unknown(item, page_id, {})
    if len(present) == 1:
        (key,) = present
    else:
        key = min(present, key=_RANK.__getitem__)
    try:
        body = item[key]
        if type(body) is not dict:
            raise ItemError(f"{key} is not an object")
        return _READ[key](item, body, page_id)
    except ValueError as e:
        log.info("page %s: %s item stored as unknown: %s", page_id, key, _short(e))
        return _unknown(item, page_id, {"intended_kind": key, "parse_error": _short(e)})
    except (TypeError, KeyError, AttributeError) as e:
        # A shape this mapper did not foresee (a bug here, not Meta's): the item is still
        # stored, as unknown, and the request still succeeds.
        log.warning(
            "page %s: %s item unreadable, stored as unknown: %s", page_id, key, type(e).__name__
        )
        return _unknown(item, page_id, {"intended_kind": key, "parse_error": _short(e)})


def map_item(page_id: str, entry_time: int | None, item: Item, channel: str) -> Envelope:
    """Return the envelope of one ``messaging``/``standby`` item; never raises for bad items.

    ``entry_time`` is the entry's time in ms (None when it has none), used when the item
    has no ``timestamp``; ``channel`` is ``"messaging"`` or ``"standby"`` (kept in
    ``attrs`` for standby).
    """
    fact = read_item(item, page_id)
    attrs = fact.attrs if channel == "messaging" else {**fact.attrs, "channel": channel}
    occurred_at = fact.occurred_at
    if occurred_at is None:
        occurred_at = ms(item.get("timestamp")) or entry_time or 0
    # The readers above only yield values of the envelope's types and bounds (the tests
    # decode every envelope they map with Envelope.from_bytes, which checks them all), so
    # the envelope is made as is; Envelope.build would check them a second time.
    return Envelope(
        event_id=make_event_id(
            fact.kind,
            page_id,
            fact.psid,
            fact.mid,
            fact.watermark,
            occurred_at,
            fact.detail,
        ),
        kind=fact.kind,
        page_id=page_id,
        psid=fact.psid,
        direction=fact.direction,
        mid=fact.mid,
        occurred_at=occurred_at,
        text=fact.text,
        watermark=fact.watermark,
        source="webhook",
        attrs=attrs,
        raw=item,
    )


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


def map_body(entries: list[Entry]) -> list[Envelope]:
    """Return one envelope per item of a body's ``entries``, in the order Meta sent them."""
    return [
        map_item(entry.id, entry.time, item, channel)
        for entry in entries
        for channel, items in (("messaging", entry.messaging), ("standby", entry.standby))
        for item in items
    ]
