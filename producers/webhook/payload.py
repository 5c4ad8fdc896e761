"""The edge model of a webhook POST body: a ``page`` object with ``entry[]`` lists."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from convsync.errors import PoisonError
from schemas.nesting import MAX_DEPTH, deeper_than


def _id_string(value: Any) -> Any:
    # Meta sends ids as strings; a bare integer id is the same id.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


PageId = Annotated[
    str, BeforeValidator(_id_string), Field(min_length=1, max_length=64, pattern=r"^\S+$")
]


_M = TypeVar("_M", bound=BaseModel)


class Entry(BaseModel):
    """One ``entry[]`` element: the events of one page."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: PageId
    time: int | None = None
    messaging: list[dict[str, Any]] = Field(default_factory=list)
    standby: list[dict[str, Any]] = Field(default_factory=list)


class PageBody(BaseModel):
    """A Messenger webhook body: ``{"object": "page", "entry": [...]}``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    object: Literal["page"]
    entry: list[Entry]


_ENTRY_FIELDS = frozenset(Entry.model_fields)
_BODY_FIELDS = frozenset(PageBody.model_fields)
_set = object.__setattr__


def _trusted(cls: type[_M], fields: dict[str, Any], given: set[str], extra: dict[str, Any]) -> _M:
    # What model_construct sets; callers checked every value against the model first.
    model = cls.__new__(cls)
    _set(model, "__dict__", fields)
    _set(model, "__pydantic_fields_set__", given)
    _set(model, "__pydantic_extra__", extra)
    _set(model, "__pydantic_private__", None)
    return model


def _extra(raw: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    # Most bodies carry no extra keys: a set comparison spares the comprehension.
    if raw.keys() <= fields:
        return {}
    return {k: v for k, v in raw.items() if k not in fields}


def _plain_items(raw: dict[str, Any], channel: str) -> list[dict[str, Any]] | None:
    items = raw.get(channel)
    if items is None:
        return [] if channel not in raw else None
    if type(items) is not list:
        return None
    for item in items:
        if type(item) is not dict:
            return None
    return items


def _plain_entry(raw: Any) -> Entry | None:
    if type(raw) is not dict:
        return None
    page_id = raw.get("id")
    if type(page_id) is int:
        page_id = str(page_id)
    # Digits only: Meta's page ids; anything else goes through the model's own pattern.
    if (
        type(page_id) is not str
        or not 0 < len(page_id) <= 64
        or not page_id.isdecimal()
        or not page_id.isascii()
    ):
        return None
    when = raw.get("time")
    if when is not None and type(when) is not int:
        return None
    messaging = _plain_items(raw, "messaging")
    standby = _plain_items(raw, "standby")
    if messaging is None or standby is None:
        return None
    fields = {"id": page_id, "time": when, "messaging": messaging, "standby": standby}
    return _trusted(Entry, fields, set(raw), _extra(raw, _ENTRY_FIELDS))


def _plain_body(decoded: dict[str, Any]) -> PageBody | None:
    """Return the page body without pydantic when every value already has its model's type.

    Validation would return equal models for such bodies (the tests check it); it costs
    about as much as the JSON parse, so the common case skips it. None: validate instead.
    """
    entries = []
    for raw in decoded["entry"]:
        entry = _plain_entry(raw)
        if entry is None:
            return None
        entries.append(entry)
    fields = {"object": "page", "entry": entries}
    return _trusted(PageBody, fields, set(decoded), _extra(decoded, _BODY_FIELDS))


class BadBodyError(PoisonError):
    """The body is not JSON or not a page payload; ``reason`` is safe to return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_body(body: bytes) -> dict[str, Any]:
    """Return the JSON object of ``body`` once it looks like a page payload.

    Raises :class:`BadBodyError` when ``body`` is not JSON, nests too deep, or is not a
    page payload (``object`` other than ``page``, no ``entry`` list). The entries
    themselves are checked by :func:`page_body_of`.
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadBodyError("body is not valid JSON") from e
    if not isinstance(decoded, dict):
        raise BadBodyError("body is not a JSON object")
    # Depth is at most the number of brackets: most bodies skip the walk.
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and deeper_than(decoded):
        raise BadBodyError(f"body nests deeper than {MAX_DEPTH} levels")
    if decoded.get("object") != "page":
        raise BadBodyError("object is not 'page'")
    if not isinstance(decoded.get("entry"), list):
        raise BadBodyError("no entry list")
    return decoded


def page_body_of(decoded: dict[str, Any]) -> PageBody:
    """Return the validated page body of a :func:`decode_body` result.

    Raises :class:`BadBodyError` on malformed entries.
    """
    plain = _plain_body(decoded)
    if plain is not None:
        return plain
    try:
        return PageBody.model_validate(decoded)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadBodyError(f"not a page payload at {where[:80]}") from e


def parse_body(body: bytes) -> PageBody:
    """Return the validated page body decoded from ``body``.

    Raises :class:`BadBodyError` with a short reason when ``body`` is not JSON or not a page
    payload (``object`` other than ``page``, no ``entry`` list, malformed entries).
    """
    return page_body_of(decode_body(body))
