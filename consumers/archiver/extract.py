"""The attachments of an event record, read by the same rule as the ``attachments`` view.

The SQL functions ``attachment_list``, ``attachment_url`` and ``attachment_type``
(schemas/migrations/0007_attachments.sql) define the projection; these functions are
their Python twins, so the archiver fetches the URL the view shows (a test feeds both the
same JSON values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from convsync.errors import PoisonError
from schemas.envelope import Envelope

# (outer key, inner key or None), in the order the SQL function tries them.
_URL_PLACES: Final = (
    ("url", None),
    ("URL", None),
    ("payload", "url"),
    ("payload", "URL"),
    ("image_data", "url"),
    ("video_data", "url"),
    ("file_url", None),
)
# Cheap pre-filter: a record whose bytes do not contain this has no attachments.
MARKER: Final = b'"attachments"'


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment of one event: its key in ``attachment_files`` and what to fetch."""

    page_id: str
    event_id: str
    psid: str
    idx: int
    url: str | None
    type: str | None


def attachment_list(value: Any) -> list[Any]:
    """Return ``attrs['attachments']`` as a list (an object is one attachment)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    return []


def attachment_url(item: Any) -> str | None:
    """Return the first non-empty string among an attachment's URL places, or None."""
    if not isinstance(item, dict):
        return None
    for outer, inner in _URL_PLACES:
        value = item.get(outer)
        if inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def attachment_type(item: Any) -> str | None:
    """Return the attachment's type: its ``type``, else what Graph's fields imply."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(item.get("image_data"), dict):
        return "image"
    if isinstance(item.get("video_data"), dict):
        return "video"
    if isinstance(item.get("file_url"), str):
        return "file"
    return None


def attachments_of(value: bytes) -> list[Attachment]:
    """Return the attachments of one ``<prefix>.events`` record value (often none).

    Raises :class:`PoisonError` when the record is not a valid envelope (the materializer
    sends such a record to the dead-letter topic; the archiver counts and skips it).
    """
    if MARKER not in value:
        return []
    try:
        attrs = orjson.loads(value).get("attrs")
    except (orjson.JSONDecodeError, AttributeError) as e:
        raise PoisonError(f"not a JSON object: {e}") from e
    if not isinstance(attrs, dict) or "attachments" not in attrs:
        return []
    env = Envelope.from_bytes(value)
    items = attachment_list(env.attrs.get("attachments"))
    return [
        Attachment(env.page_id, env.event_id, env.psid, i, attachment_url(it), attachment_type(it))
        for i, it in enumerate(items)
    ]
