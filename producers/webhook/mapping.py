"""Webhook ``messaging``/``standby`` items -> envelopes, one per event, every kind.

The one definition of what an item becomes. :data:`KINDS` is the table of kinds: the
item field that names a kind, the kind, and the function that reads it; a new kind, or
a platform's variant of one, is a row and a reader. Ids follow :mod:`schemas.event_id`:
a reader's ``detail`` is the one the rule names for its kind. An item that cannot be
read as its kind (a field missing or of the wrong type) becomes kind ``unknown`` with the
reason in ``attrs``: it is never dropped, and its raw JSON always travels in ``raw``.

Both platforms share the table: an ``instagram`` body's items have Messenger's shapes
(the account id, ``entry.id``, plays the page id's role), plus Instagram's own fields
(``is_deleted``: an unsend; ``reply_to.story``; ``read`` naming a ``mid``, not a
watermark). A guest of a plugin, named by ``user_ref`` instead of an id, is a
conversation of its own (:data:`~schemas.envelope.USER_REF_PREFIX`). An item
whose user would be the page itself is a defect (:class:`ItemDefectError`), not a
conversation of the page with itself.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

import msgspec

from producers.webhook.fields import (
    attachments,
    ms,
    number,
    party,
    user_ref_key,
    user_ref_of,
)
from producers.webhook.payload import Entry
from schemas.envelope import DEFECT_ATTR, Envelope
from schemas.event_id import canonical_json, detail_digest, make_event_id
from schemas.kinds import Direction, EventKind, Platform

log = logging.getLogger(__name__)

Item = dict[str, Any]
# The user of an item that names none (a malformed item, ``app_roles``) is a key of the
# item's own: this prefix and the sha256 of the whole item, so unrelated items never
# share a conversation, and Meta's retries of one item do.
NO_PSID_PREFIX: Final = "item:"
HANDOVER_ACTIONS: Final = {
    "pass_thread_control": "pass",
    "take_thread_control": "take",
    "request_thread_control": "request",
}


class ItemError(ValueError):
    """An item lacks a field its kind needs; it is stored as ``unknown`` instead."""


class ItemDefectError(ValueError):
    """An item that cannot be a fact of any conversation of its page (its user would be
    the page itself: sender and recipient swapped). Not stored as an event: the caller
    dead-letters it with this reason."""


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


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if type(value) is str and value else None


def _need(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if type(value) is str and value:
        return value
    raise ItemError(f"{key} missing")


def _user(item: Item, page_id: str) -> str:
    psid = party(item, "sender")
    if psid is None:
        raise ItemError("sender.id missing")
    if psid == page_id:
        raise ItemDefectError("the sender is the page itself (sender and recipient swapped?)")
    return psid


def _with_link(fact: Fact, item: Item) -> Fact:
    # A user_ref next to the user's id (either side): Meta revealed the PSID of a guest;
    # the materializer records the link (user_refs).
    if "user_ref" in fact.attrs:
        return fact
    for side in ("sender", "recipient"):
        ref = user_ref_of(item, side)
        if ref is not None and party(item, side) == fact.psid:
            return msgspec.structs.replace(fact, attrs={**fact.attrs, "user_ref": ref})
    return fact


def _message(item: Item, message: dict[str, Any], page_id: str) -> Fact:
    mid = _need(message, "mid")
    attrs: dict[str, Any]
    direction: Direction
    if message.get("is_echo") is True:
        # The page sent it: the user is the recipient.
        psid = party(item, "recipient")
        if psid is None:
            raise ItemError("recipient.id missing on echo")
        if psid == page_id:
            raise ItemDefectError("the recipient of an echo is the page itself")
        direction = "outbound"
        attrs = {"is_echo": True}
        for key in ("app_id", "metadata"):
            if message.get(key) is not None:
                attrs[key] = message[key]
    else:
        psid = _user(item, page_id)
        direction = "inbound"
        attrs = {}
    if message.get("is_deleted") is True:
        # Instagram's unsend: the message is marked deleted, never dropped.
        return Fact("unsend", psid, {**attrs, "is_deleted": True}, direction, mid)
    if message.get("is_unsupported") is True:
        attrs["is_unsupported"] = True
    quick_reply = message.get("quick_reply")
    if type(quick_reply) is dict and quick_reply.get("payload") is not None:
        attrs["quick_reply_payload"] = quick_reply["payload"]
    reply_to = message.get("reply_to")
    if type(reply_to) is dict and reply_to.get("mid") is not None:
        attrs["reply_to_mid"] = reply_to["mid"]
    if type(reply_to) is dict and type(reply_to.get("story")) is dict:
        # A reply to the account's story (Instagram): the story's id and media url.
        attrs["reply_to_story"] = _present(reply_to["story"], ("id", "url"))
    referral = message.get("referral")
    if type(referral) is dict:
        # A message sent from an ad or a link: where the user came from.
        attrs["referral"] = referral
    if "attachments" in message:
        found = attachments(message)
        if found:
            attrs["attachments"] = found
    text = message.get("text")
    return Fact("message", psid, attrs, direction, mid, text if type(text) is str else None)


def _watermarked(kind: EventKind) -> Reader:
    def read(item: Item, body: dict[str, Any], page_id: str) -> Fact:
        attrs: dict[str, Any] = {}
        mids = body.get("mids")
        if type(mids) is list:
            attrs["mids"] = [m for m in mids if type(m) is str]
        mid = _str(body, "mid")
        if mid is not None and "mids" not in attrs:
            # A delivery or read of one message (Instagram's messaging_seen).
            attrs["mids"] = [mid]
        timestamp = ms(item.get("timestamp"))
        # Instagram's messaging_seen names the message seen, not a watermark: everything
        # up to the moment it was seen is read.
        watermark = ms(body.get("watermark"))
        if watermark is None and mid is not None:
            watermark = timestamp
        if watermark is None:
            raise ItemError("watermark missing")
        # Meta's delivery items may carry no timestamp of their own.
        occurred_at = timestamp or watermark
        psid = _user(item, page_id)
        return Fact(kind, psid, attrs, None, mid, None, watermark, occurred_at)

    return read


def _reaction(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    action = _str(body, "action") or ""
    emoji = _str(body, "emoji") or ""
    psid = _user(item, page_id)
    attrs = {"action": action, "emoji": emoji}
    if body.get("reaction") is not None:
        attrs["reaction"] = body["reaction"]
    mid = _need(body, "mid")
    return Fact("reaction", psid, attrs, "inbound", mid, detail=f"{action}:{emoji}")


def _edit(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    # Some senders write the edit number as a string of digits: the same number (and
    # the same event id). A value of another shape is kept as it came.
    sent = body.get("num_edit")
    read = number(sent)
    num_edit = sent if read is None else read
    text = body.get("text")
    return Fact(
        "edit",
        _user(item, page_id),
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
        _user(item, page_id),
        _present(body, ("title", "payload", "referral")),
        "inbound",
        _str(body, "mid"),
        title if type(title) is str else None,
        detail=payload if type(payload) is str else None,
    )


# ads_context_data: the ad's title, photo, video, post; origin_domain: the site of a chat
# plugin.
_REFERRAL_ATTRS: Final = (
    "ref",
    "source",
    "type",
    "ad_id",
    "referer_uri",
    "ads_context_data",
    "origin_domain",
    "is_guest_user",
)


def _referral(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    psid = _user(item, page_id)
    attrs = _present(body, _REFERRAL_ATTRS)
    return Fact("referral", psid, attrs, "inbound", detail=detail_digest(item))


def _handover(key: str) -> Reader:
    action = HANDOVER_ACTIONS[key]

    def read(item: Item, body: dict[str, Any], page_id: str) -> Fact:
        attrs: dict[str, Any] = {**body, "action": action}
        return Fact("handover", _user(item, page_id), attrs, detail=detail_digest(item))

    return read


# Opt-in fields copied to attrs; tokens stay in ``raw`` only, never copied anywhere else.
_OPTIN_ATTRS: Final = (
    "type",
    "ref",
    "payload",
    "user_ref",
    "title",
    "notification_messages_frequency",
    "notification_messages_timezone",
    "notification_messages_status",
    "user_token_status",
)


def _optin(item: Item, body: dict[str, Any], page_id: str) -> Fact:
    # The checkbox plugin's opt-in names the user by user_ref, not by a PSID.
    psid = party(item, "sender") or user_ref_key(body.get("user_ref"))
    if psid is None:
        raise ItemError("no sender id or user_ref")
    if psid == page_id:
        raise ItemDefectError("the sender is the page itself (sender and recipient swapped?)")
    # A user_ref next to a PSID (in the opt-in or beside the sender's id) is the link
    # between a guest and the PSID Meta revealed for it.
    attrs = _present(body, _OPTIN_ATTRS)
    status = body.get("notification_messages_status")
    if body.get("type") == "notification_messages":
        # Opted in unless the user stopped them (STOP_NOTIFICATIONS).
        attrs["notification_messages_opted_in"] = status != "STOP_NOTIFICATIONS"
    expiry = ms(body.get("token_expiry_timestamp"))
    if expiry is not None:
        attrs["token_expiry_ms"] = expiry
    return Fact("optin", psid, attrs, detail=detail_digest(item))


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
    # The user is whichever party is not the page; else a key of the item's own.
    parties = (party(item, "sender"), party(item, "recipient"))
    psid = next((p for p in parties if p is not None and p != page_id), None)
    return Fact("unknown", psid or _own_key(item), attrs, detail=detail_digest(item))


def read_item(item: Item, page_id: str) -> Fact:
    """Return what ``item`` is by :data:`KINDS`.

    Never raises for bad items but for :class:`ItemDefectError` (an item whose user would be
    the page itself).
    """
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
    except ItemDefectError:
        raise
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


def map_item(
    page_id: str,
    entry_time: int | None,
    item: Item,
    channel: str,
    platform: Platform = "messenger",
) -> Envelope:
    """Return the envelope of one ``messaging``/``standby`` item.

    ``entry_time`` is the entry's time in ms (None when it has none), used when the item
    has no ``timestamp``; ``channel`` is ``"messaging"`` or ``"standby"`` (kept in
    ``attrs`` for standby); ``platform`` is ``instagram`` for an ``instagram`` body's
    items (``page_id`` is then the account id). Raises :class:`ItemDefectError` for an item
    that is no fact of any conversation (to dead-letter); never raises for other bad
    items (they become ``unknown``).
    """
    fact = _with_link(read_item(item, page_id), item)
    return _envelope(fact, page_id, entry_time, item, channel, platform)


def defect_item(
    page_id: str,
    entry_time: int | None,
    item: Item,
    channel: str,
    platform: Platform,
    defect: ItemDefectError,
) -> Envelope:
    """Return an :class:`ItemDefectError` item as kind ``unknown``, under a key of its own
    (never the page's), the reason in ``attrs.defect``: for a caller with no dead-letter
    path, so that the item is still kept."""
    attrs = {DEFECT_ATTR: _short(defect)}
    fact = Fact("unknown", _own_key(item), attrs, detail=detail_digest(item))
    return _envelope(fact, page_id, entry_time, item, channel, platform)


def _own_key(item: Item) -> str:
    return NO_PSID_PREFIX + hashlib.sha256(canonical_json(item)).hexdigest()[:32]


def _envelope(
    fact: Fact,
    page_id: str,
    entry_time: int | None,
    item: Item,
    channel: str,
    platform: Platform,
) -> Envelope:
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
        platform=platform,
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
    """Return one envelope per item of a body's ``entries``, in the order Meta sent them.

    Raises :class:`ItemDefectError` for an item that is no fact of any conversation.
    """
    return [
        map_item(entry.id, entry.time, item, channel, entry.platform)
        for entry in entries
        for channel, items in (("messaging", entry.messaging), ("standby", entry.standby))
        for item in items
    ]
