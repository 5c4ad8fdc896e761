"""Webhook ``messaging``/``standby`` items -> envelopes, one per event, every kind.

Ids follow :mod:`schemas.event_id`: the ``detail`` passed to :meth:`Envelope.build` is the
one the rule names for the kind. An item that cannot be read as its kind (a field
missing or of the wrong type) becomes kind ``unknown`` with the reason in ``attrs``: it is
never dropped, and its raw JSON always travels in ``raw``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Final

from producers.webhook.payload import PageBody
from schemas.envelope import Envelope
from schemas.event_id import detail_digest
from schemas.kinds import EventKind

log = logging.getLogger(__name__)

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


def _ident(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    return None


def _ms(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_MS:
        return value
    return None


def _party(item: dict[str, Any], side: str) -> str | None:
    who = item.get(side)
    return _ident(who.get("id")) if isinstance(who, dict) else None


def _obj(item: dict[str, Any], key: str) -> dict[str, Any]:
    value = item.get(key)
    if not isinstance(value, dict):
        raise ItemError(f"{key} is not an object")
    return value


def _str(obj: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if isinstance(value, str) and value:
        return value
    if required:
        raise ItemError(f"{key} missing")
    return None


def _user(item: dict[str, Any]) -> str:
    psid = _party(item, "sender")
    if psid is None:
        raise ItemError("sender.id missing")
    return psid


class _Item:
    """One item being mapped: its page, time, channel and the fields every kind shares."""

    __slots__ = ("channel", "item", "occurred_at", "page_id")

    def __init__(self, page_id: str, entry_time: int | None, item: dict[str, Any], channel: str):
        self.page_id = page_id
        self.item = item
        self.channel = channel
        self.occurred_at = _ms(item.get("timestamp")) or entry_time or 0

    def build(self, kind: EventKind, psid: str, attrs: dict[str, Any], **fields: Any) -> Envelope:
        if self.channel != "messaging":
            attrs = {**attrs, "channel": self.channel}
        return Envelope.build(
            kind=kind,
            page_id=self.page_id,
            psid=psid,
            occurred_at=fields.pop("occurred_at", self.occurred_at),
            source="webhook",
            raw=self.item,
            attrs=attrs,
            **fields,
        )


def _attachments(message: dict[str, Any]) -> list[dict[str, Any]]:
    attachments = message.get("attachments")
    if not isinstance(attachments, list):
        return []
    out = []
    for att in attachments:
        if not isinstance(att, dict):
            continue
        raw_payload = att.get("payload")
        payload: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}
        summary = {
            "type": att.get("type"),
            "url": payload.get("url") or att.get("url"),
            "title": payload.get("title") or att.get("title"),
        }
        if payload.get("sticker_id") is not None:
            summary["sticker_id"] = payload["sticker_id"]
        out.append({k: v for k, v in summary.items() if v is not None})
    return out


def _message(it: _Item) -> Envelope:
    message = _obj(it.item, "message")
    mid = _str(message, "mid", required=True)
    attrs: dict[str, Any] = {}
    if message.get("is_echo") is True:
        # The page sent it: the user is the recipient.
        psid = _party(it.item, "recipient")
        if psid is None:
            raise ItemError("recipient.id missing on echo")
        direction = "outbound"
        attrs["is_echo"] = True
        for key in ("app_id", "metadata"):
            if message.get(key) is not None:
                attrs[key] = message[key]
    else:
        psid = _user(it.item)
        direction = "inbound"
    quick_reply = message.get("quick_reply")
    if isinstance(quick_reply, dict) and quick_reply.get("payload") is not None:
        attrs["quick_reply_payload"] = quick_reply["payload"]
    reply_to = message.get("reply_to")
    if isinstance(reply_to, dict) and reply_to.get("mid") is not None:
        attrs["reply_to_mid"] = reply_to["mid"]
    attachments = _attachments(message)
    if attachments:
        attrs["attachments"] = attachments
    text = message.get("text")
    return it.build(
        "message",
        psid,
        attrs,
        direction=direction,
        mid=mid,
        text=text if isinstance(text, str) else None,
    )


def _watermarked(kind: EventKind) -> Callable[[_Item], Envelope]:
    def mapper(it: _Item) -> Envelope:
        body = _obj(it.item, kind)
        watermark = _ms(body.get("watermark"))
        if watermark is None:
            raise ItemError("watermark missing")
        attrs: dict[str, Any] = {}
        mids = body.get("mids")
        if isinstance(mids, list):
            attrs["mids"] = [m for m in mids if isinstance(m, str)]
        # Meta's delivery items may carry no timestamp of their own.
        occurred_at = _ms(it.item.get("timestamp")) or watermark
        return it.build(kind, _user(it.item), attrs, watermark=watermark, occurred_at=occurred_at)

    return mapper


def _reaction(it: _Item) -> Envelope:
    body = _obj(it.item, "reaction")
    action = _str(body, "action") or ""
    emoji = _str(body, "emoji") or ""
    attrs = {"action": action, "emoji": emoji, "reaction": body.get("reaction")}
    return it.build(
        "reaction",
        _user(it.item),
        {k: v for k, v in attrs.items() if v is not None},
        direction="inbound",
        mid=_str(body, "mid", required=True),
        detail=f"{action}:{emoji}",
    )


def _edit(it: _Item) -> Envelope:
    body = _obj(it.item, "message_edit")
    num_edit = body.get("num_edit")
    text = body.get("text")
    return it.build(
        "edit",
        _user(it.item),
        {"num_edit": num_edit} if num_edit is not None else {},
        direction="inbound",
        mid=_str(body, "mid", required=True),
        text=text if isinstance(text, str) else None,
        detail=str(num_edit) if num_edit is not None else None,
    )


def _postback(it: _Item) -> Envelope:
    body = _obj(it.item, "postback")
    payload = body.get("payload")
    attrs = {k: body[k] for k in ("title", "payload", "referral") if body.get(k) is not None}
    title = body.get("title")
    return it.build(
        "postback",
        _user(it.item),
        attrs,
        direction="inbound",
        mid=_str(body, "mid"),
        text=title if isinstance(title, str) else None,
        detail=payload if isinstance(payload, str) else None,
    )


def _referral(it: _Item) -> Envelope:
    body = _obj(it.item, "referral")
    keys = ("ref", "source", "type", "ad_id", "referer_uri")
    attrs = {k: body[k] for k in keys if body.get(k) is not None}
    return it.build(
        "referral", _user(it.item), attrs, direction="inbound", detail=detail_digest(it.item)
    )


def _handover(key: str) -> Callable[[_Item], Envelope]:
    def mapper(it: _Item) -> Envelope:
        body = _obj(it.item, key)
        attrs: dict[str, Any] = {**body, "action": HANDOVER_ACTIONS[key]}
        return it.build("handover", _user(it.item), attrs, detail=detail_digest(it.item))

    return mapper


def _optin(it: _Item) -> Envelope:
    body = _obj(it.item, "optin")
    sender = it.item.get("sender")
    # The checkbox plugin's opt-in names the user by user_ref, not by a PSID.
    psid = (
        _party(it.item, "sender")
        or (_ident(sender.get("user_ref")) if isinstance(sender, dict) else None)
        or _ident(body.get("user_ref"))
    )
    if psid is None:
        raise ItemError("no sender id or user_ref")
    # Tokens stay in ``raw`` only, so they are never copied anywhere else.
    keys = ("type", "ref", "payload", "user_ref", "title", "notification_messages_frequency")
    attrs = {k: body[k] for k in keys if body.get(k) is not None}
    return it.build("optin", psid, attrs, detail=detail_digest(it.item))


# First key present wins; ``message`` before the rest since edits/reactions never carry it.
_MAPPERS: Final[tuple[tuple[str, Callable[[_Item], Envelope]], ...]] = (
    ("message", _message),
    ("message_edit", _edit),
    ("reaction", _reaction),
    ("delivery", _watermarked("delivery")),
    ("read", _watermarked("read")),
    ("postback", _postback),
    ("pass_thread_control", _handover("pass_thread_control")),
    ("take_thread_control", _handover("take_thread_control")),
    ("request_thread_control", _handover("request_thread_control")),
    ("optin", _optin),
    ("referral", _referral),
)


def _unknown(it: _Item, attrs: dict[str, Any]) -> Envelope:
    # The user is whichever party is not the page.
    parties = (_party(it.item, "sender"), _party(it.item, "recipient"))
    psid = next((p for p in parties if p is not None and p != it.page_id), NO_PSID)
    return it.build("unknown", psid, attrs, detail=detail_digest(it.item))


def map_item(page_id: str, entry_time: int | None, item: dict[str, Any], channel: str) -> Envelope:
    """Return the envelope of one ``messaging``/``standby`` item; never raises for bad items.

    ``channel`` is ``"messaging"`` or ``"standby"`` (kept in ``attrs`` for standby).
    """
    it = _Item(page_id, entry_time, item, channel)
    for key, mapper in _MAPPERS:
        if key in item:
            try:
                return mapper(it)
            except ValueError as e:
                # ItemError, or the envelope's own validation (ValidationError is one).
                log.info("page %s: %s item stored as unknown: %s", page_id, key, _short(e))
                return _unknown(it, {"intended_kind": key, "parse_error": _short(e)})
            except (TypeError, KeyError, AttributeError) as e:
                # A shape this mapper did not foresee (a bug here, not Meta's): the item is
                # still stored, as unknown, and the request still succeeds.
                log.warning(
                    "page %s: %s item unreadable, stored as unknown: %s",
                    page_id,
                    key,
                    type(e).__name__,
                )
                return _unknown(it, {"intended_kind": key, "parse_error": _short(e)})
    return _unknown(it, {})


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


def iter_items(body: PageBody) -> Iterator[tuple[str, int | None, dict[str, Any], str]]:
    """Yield ``(page_id, entry_time, item, channel)`` for every item of every entry."""
    for entry in body.entry:
        for channel, items in (("messaging", entry.messaging), ("standby", entry.standby)):
            for item in items:
                yield entry.id, _ms(entry.time), item, channel


def map_body(body: PageBody) -> list[Envelope]:
    """Return one envelope per item of ``body``, in the order Meta sent them."""
    return [map_item(*args) for args in iter_items(body)]
