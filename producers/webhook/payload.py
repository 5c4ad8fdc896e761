"""The edge model of a webhook POST body: a ``page`` object with ``entry[]`` lists."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from convsync.errors import PoisonError


def _id_string(value: Any) -> Any:
    # Meta sends ids as strings; a bare integer id is the same id.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


PageId = Annotated[
    str, BeforeValidator(_id_string), Field(min_length=1, max_length=64, pattern=r"^\S+$")
]


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


class BadBodyError(PoisonError):
    """The body is not JSON or not a page payload; ``reason`` is safe to return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_body(body: bytes) -> PageBody:
    """Return the validated page body decoded from ``body``.

    Raises :class:`BadBodyError` with a short reason when ``body`` is not JSON or not a page
    payload (``object`` other than ``page``, no ``entry`` list, malformed entries).
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadBodyError("body is not valid JSON") from e
    if not isinstance(decoded, dict):
        raise BadBodyError("body is not a JSON object")
    if decoded.get("object") != "page":
        raise BadBodyError("object is not 'page'")
    if not isinstance(decoded.get("entry"), list):
        raise BadBodyError("no entry list")
    try:
        return PageBody.model_validate(decoded)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadBodyError(f"not a page payload at {where[:80]}") from e
