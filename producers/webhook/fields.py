"""Field readers of webhook items: times, the people an item names, attachments.

Shared by every reader of :mod:`producers.webhook.mapping`, for both platforms
(Messenger's ``page`` bodies and Instagram's ``instagram`` bodies use the same shapes).
Each reader takes the JSON Meta sent as it is and returns a value the envelope can hold,
or None: they never raise for bad input.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from schemas.envelope import USER_REF_PREFIX

Item = dict[str, Any]

_MAX_MS: Final = 2**53
# Below this many ms a time of digits is in seconds: 10^11 ms is 1973, 10^11 s is 5138.
_SECONDS_BELOW: Final = 10**11
_DIGITS: Final = re.compile(r"[0-9]{1,16}").fullmatch
_MAX_ID: Final = 64


def ms(value: Any) -> int | None:
    """Return ``value`` as a time in ms since the epoch the envelope can hold, else None.

    An integer is ms (Meta's ``timestamp``, ``watermark``). A string is read as Meta's
    older and third-party senders write one: digits (ms, or seconds when below 10^11 ms,
    which only a time in seconds can be after 1973) or ISO 8601 (a time without a zone
    is UTC). Anything else, or a time before the epoch, is None: never 0.
    """
    if type(value) is int:
        return value if 0 <= value < _MAX_MS else None
    if type(value) is not str or not value:
        return None
    if _DIGITS(value):
        n = int(value)
        return n * 1000 if n < _SECONDS_BELOW else (n if n < _MAX_MS else None)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    total = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return total if 0 <= total < _MAX_MS else None


def ident(value: Any) -> str | None:
    """Return an id Meta sent as a string (or a bare integer), when it is 1-64 chars."""
    if type(value) is int:
        value = str(value)
    if type(value) is str and 0 < len(value) <= _MAX_ID:
        return value
    return None


def user_ref_key(ref: Any) -> str | None:
    """Return the conversation key of a guest known by a plugin's ``user_ref``."""
    value = ident(ref)
    if value is None or len(value) > _MAX_ID - len(USER_REF_PREFIX):
        return None
    return USER_REF_PREFIX + value


def party(item: Item, side: str) -> str | None:
    """Return the id of ``sender`` or ``recipient``: its ``id``, else its guest key."""
    who = item.get(side)
    if type(who) is not dict:
        return None
    return ident(who.get("id")) or user_ref_key(who.get("user_ref"))


def user_ref_of(item: Item, side: str) -> str | None:
    """Return the ``user_ref`` of ``sender``/``recipient`` when it also has an ``id``:
    the link between a guest's key and the PSID Meta later reveals for it."""
    who = item.get(side)
    if type(who) is not dict or ident(who.get("id")) is None:
        return None
    return ident(who.get("user_ref"))


def number(value: Any) -> int | None:
    """Return a count Meta sent as an integer or as a string of digits."""
    if type(value) is int:
        return value
    if type(value) is str and _DIGITS(value):
        return int(value)
    return None


# Attachment payload fields kept in an attachment's summary besides type, url and title:
# Instagram's shared reels and posts, stickers, a location's coordinates.
_PAYLOAD_KEYS: Final = ("sticker_id", "reel_video_id", "ig_post_media_id", "coordinates")


def attachments(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Return a summary of each attachment of ``message``: type, url, title, and the
    payload fields that say what it is (a template's whole payload: its buttons and
    elements). Fallback links of the older shape name their link ``URL``."""
    found = message.get("attachments")
    if type(found) is not list:
        return []
    out = []
    for att in found:
        if type(att) is not dict:
            continue
        raw_payload = att.get("payload")
        payload: dict[str, Any] = raw_payload if type(raw_payload) is dict else {}
        summary = {
            "type": att.get("type"),
            "url": payload.get("url") or att.get("url") or payload.get("URL") or att.get("URL"),
            "title": payload.get("title") or att.get("title"),
        }
        for key in _PAYLOAD_KEYS:
            if payload.get(key) is not None:
                summary[key] = payload[key]
        if att.get("type") == "template" and payload:
            summary["template"] = payload
        out.append({k: v for k, v in summary.items() if v is not None})
    return out
