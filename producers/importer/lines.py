"""The import format: one historical message per JSON line, read into event envelopes.

A line is a JSON object with exactly these fields (docs/migration.md shows an SQL export
that writes them)::

    {"page": "1234", "platform": "messenger", "psid": "5678", "mid": "m_abc",
     "time": 1709294400123, "direction": "inbound", "text": "hello",
     "attachments": [{"type": "image", "url": "https://...", "title": null}]}

``time`` is milliseconds since the epoch (UTC) or an ISO 8601 text with its offset;
``text`` and ``attachments`` may be null or left out. The envelope is a ``message`` whose
event id is the rule's id of ``(page, mid)``: a message the webhook or the crawler also
brings is the same event, merged with their copies (schemas/copies.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Annotated, Any, Final, Literal

import msgspec
import orjson

from producers.importer.exceptions import ImportLineError
from schemas.envelope import Envelope

#: The longest line read (the largest record Kafka takes by default is about 1 MB).
MAX_LINE_BYTES: Final = 1_000_000
#: Times before this many ms since the epoch (2001-09-09) are seconds by mistake, or junk.
MIN_TIME_MS: Final = 1_000_000_000_000
# The ids a page and a user may have (the admin API's rule for page and psid).
Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class Attachment(msgspec.Struct, forbid_unknown_fields=True):
    """One attachment, in the shape the webhook mapping stores (``attrs.attachments``)."""

    type: str | None = None
    url: str | None = None
    title: str | None = None


class Line(msgspec.Struct, forbid_unknown_fields=True):
    """One line of an import file, validated."""

    page: Id
    platform: Literal["messenger", "instagram"]
    psid: Id
    mid: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    time: int | str
    direction: Literal["inbound", "outbound"]
    text: str | None = None
    attachments: Annotated[list[Attachment], msgspec.Meta(max_length=100)] | None = None


def time_ms(value: int | str) -> int:
    """Return a line's ``time`` in ms since the epoch. Raises ``ValueError`` saying why not."""
    if isinstance(value, int):
        if value < MIN_TIME_MS:
            raise ValueError(
                f"time {value} is before 2001: give milliseconds since the epoch, not seconds"
            )
        return value
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"time {value!r} is not ISO 8601 (or ms since the epoch)") from None
    if when.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset (add Z or +00:00)")
    ms = round(when.timestamp() * 1000)
    if ms < MIN_TIME_MS:
        raise ValueError(f"time {value!r} is before 2001")
    return ms


def envelope_of(raw: dict[str, Any]) -> Envelope:
    """Return the ``message`` envelope of one decoded line. Raises ``ValueError``."""
    try:
        line = msgspec.convert(raw, Line)
    except msgspec.ValidationError as e:
        raise ValueError(str(e)) from None
    attrs: dict[str, Any] = {}
    if line.attachments:
        attrs["attachments"] = [
            {k: v for k, v in msgspec.structs.asdict(a).items() if v is not None}
            for a in line.attachments
        ]
    return Envelope.build(
        kind="message",
        page_id=line.page,
        psid=line.psid,
        occurred_at=time_ms(line.time),
        source="import",
        raw=raw,
        direction=line.direction,
        mid=line.mid,
        text=line.text,
        attrs=attrs,
    )


@dataclass(frozen=True, slots=True)
class Read:
    """One line of the file: its number, its envelope and the envelope's record value
    (None for a blank line)."""

    lineno: int
    envelope: Envelope | None = None
    value: bytes = b""


def read_lines(
    stream: IO[bytes],
    *,
    first: int = 1,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_record_bytes: int = 1_000_000,
) -> Iterator[Read]:
    """Yield every line of ``stream`` in order, one at a time (a file of any size),
    numbered from ``first``.

    Blank lines are yielded with no envelope. Raises :class:`ImportLineError` at the
    first line that is too long, not JSON, not an object of the format, or whose record
    would be larger than ``max_record_bytes``; the lines before it were yielded, and
    the stream is left at the start of the next line.
    """
    lineno = first - 1
    while True:
        data = stream.readline(max_line_bytes + 1)
        if not data:
            return
        lineno += 1
        if len(data) > max_line_bytes and not data.endswith(b"\n"):
            while (rest := stream.readline(max_line_bytes)) and not rest.endswith(b"\n"):
                pass  # the rest of the long line, a bounded piece at a time
            raise ImportLineError(lineno, f"longer than {max_line_bytes} bytes")
        if not data.strip():
            yield Read(lineno)
            continue
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ImportLineError(lineno, f"not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ImportLineError(lineno, "not a JSON object")
        try:
            envelope = envelope_of(raw)
        except ValueError as e:
            raise ImportLineError(lineno, str(e)) from None
        value = envelope.to_bytes()
        if len(value) > max_record_bytes:
            raise ImportLineError(
                lineno, f"its event would be {len(value)} bytes, more than {max_record_bytes}"
            )
        yield Read(lineno, envelope, value)
