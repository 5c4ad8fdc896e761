"""The edge model of a webhook POST body: a ``page`` or ``instagram`` object with
``entry[]`` lists.

The one definition of what a body must be for its items to be mapped, read from the JSON
orjson decodes, without coercion: a value has the JSON type the rule names or the body is
refused, except the entry's ``time``, only a fallback, which is ignored when unusable. A
refusal carries a short reason naming where the body is wrong.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
import orjson

from convsync.errors import PoisonError
from schemas.kinds import Platform
from schemas.nesting import MAX_DEPTH, deeper_than

Item = dict[str, Any]
# Meta's page ids are digits; any id of 1-64 characters without whitespace is kept.
_page_id: Final = re.compile(r"\S{1,64}").fullmatch
_MAX_MS: Final = 2**53
_CHANNELS: Final = ("messaging", "standby")
_KNOWN: Final = frozenset({"id", "time", *_CHANNELS})
# The body's ``object`` -> the platform of its entries' events.
PLATFORM_OF: Final[dict[str, Platform]] = {"page": "messenger", "instagram": "instagram"}


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One ``entry[]`` element: the events of one page.

    ``time`` is the entry's time when it is one in ms (the fallback time of its items);
    ``extra`` names its other fields (feed ``changes``, ``hop_context``...), in order.
    """

    id: str
    time: int | None
    messaging: list[Item]
    standby: list[Item]
    extra: list[str]
    # messenger for a ``page`` body, instagram for an ``instagram`` body (the id is then
    # the Instagram account's).
    platform: Platform = "messenger"


class BadBodyError(PoisonError):
    """The body is not JSON or not a page payload; ``reason`` is safe to return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_body(body: bytes) -> dict[str, Any]:
    """Return the JSON object of ``body`` once it looks like a page payload.

    Raises :class:`BadBodyError` when ``body`` is not JSON, nests too deep, or is not a
    page payload (``object`` other than ``page`` or ``instagram``, no ``entry`` list). The entries
    themselves are checked by :func:`page_body_of`.
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadBodyError("body is not valid JSON") from e
    if type(decoded) is not dict:
        raise BadBodyError("body is not a JSON object")
    # Depth is at most the number of brackets: most bodies skip the walk.
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and deeper_than(decoded):
        raise BadBodyError(f"body nests deeper than {MAX_DEPTH} levels")
    obj = decoded.get("object")
    if type(obj) is not str or obj not in PLATFORM_OF:
        raise BadBodyError("object is not 'page' or 'instagram'")
    if type(decoded.get("entry")) is not list:
        raise BadBodyError("no entry list")
    return decoded


def _refuse(*where: object) -> BadBodyError:
    return BadBodyError("not a page payload at " + ".".join(map(str, where)))


def _items(raw: dict[str, Any], n: int, channel: str) -> list[Item]:
    items = raw[channel]
    if type(items) is not list:
        raise _refuse("entry", n, channel)
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise _refuse("entry", n, channel, i)
    return items


def page_body_of(decoded: dict[str, Any]) -> list[Entry]:
    """Return the entries of a :func:`decode_body` result.

    Raises :class:`BadBodyError` on malformed entries: not an object, no page id of 1-64
    characters without whitespace (a string, or an integer), ``messaging`` or
    ``standby`` present but not a list of objects.
    """
    entries = []
    # decode_body let only the objects of PLATFORM_OF through.
    platform = PLATFORM_OF[str(decoded.get("object"))]
    for n, raw in enumerate(decoded["entry"]):
        if type(raw) is not dict:
            raise _refuse("entry", n)
        page_id = raw.get("id")
        if type(page_id) is int:
            # Meta sends ids as strings; a bare integer id is the same id.
            page_id = str(page_id)
        if type(page_id) is not str or _page_id(page_id) is None:
            raise _refuse("entry", n, "id")
        when = raw.get("time")
        entries.append(
            Entry(
                page_id,
                # Only a fallback for items without a timestamp: an unusable time is none.
                when if type(when) is int and 0 <= when < _MAX_MS else None,
                _items(raw, n, "messaging") if "messaging" in raw else [],
                _items(raw, n, "standby") if "standby" in raw else [],
                [] if raw.keys() <= _KNOWN else [k for k in raw if k not in _KNOWN],
                platform,
            )
        )
    return entries


def parse_body(body: bytes) -> list[Entry]:
    """Return the entries of the page body decoded from ``body``.

    Raises :class:`BadBodyError` with a short reason when ``body`` is not JSON or not a page
    payload (``object`` other than ``page`` or ``instagram``, no ``entry`` list, malformed
    entries).
    """
    return page_body_of(decode_body(body))
