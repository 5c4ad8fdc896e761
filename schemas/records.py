"""Records other than the envelope that travel on convsync topics.

Dead letters are bounded in size. A letter carries the original key and value
base64-encoded (4/3 of their size plus the JSON around them), so a record close to
Kafka's 1 MB limit would give a letter over it: the producer refuses it, and a component
that cannot dead-letter a poison record cannot move past it (it retries or crashes and
meets the same record again). :func:`dead_letter` therefore keeps at most
:data:`VALUE_COPY_LIMIT` bytes of the value and :data:`KEY_COPY_LIMIT` of the key, and
says so: the letter's ``reason`` tells a human, its Kafka headers tell a program
(``convsync-truncated`` names what was cut, ``convsync-key-bytes`` and
``convsync-value-bytes`` give the original sizes). The whole original stays at
``topic[partition]@offset`` until that topic's retention removes it. If Kafka refuses
even that letter (a ``<prefix>.dlq`` whose ``max.message.bytes`` is set lower), the
sender sends it again with ``copies=False``: no copy of the key or value at all.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

DLQ_SCHEMA_VERSION: Final = 1
VALUE_COPY_LIMIT: Final = 256 * 1024  # ~350 KB of base64: far under any record limit
KEY_COPY_LIMIT: Final = 1024
TRUNCATED_HEADER: Final = "convsync-truncated"
KEY_BYTES_HEADER: Final = "convsync-key-bytes"
VALUE_BYTES_HEADER: Final = "convsync-value-bytes"


class DeadLetter(BaseModel):
    """A record that could not be processed, on ``<prefix>.dlq``, with why and where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = DLQ_SCHEMA_VERSION
    reason: str = Field(description="Why the record is poison, for a human.")
    error_type: str = Field(description="The class name of the error.")
    component: str = Field(description="Which component rejected it (materializer, ...).")
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = Field(description="The original key bytes, base64.")
    value_b64: str | None = Field(description="The original value bytes, base64.")
    failed_at: int = Field(ge=0, description="ms since the epoch")

    @staticmethod
    def encode_bytes(data: bytes | None) -> str | None:
        """Return ``data`` as base64 text, keeping ``None``."""
        return None if data is None else base64.b64encode(data).decode("ascii")

    def original_value(self) -> bytes | None:
        """Return the original record value bytes."""
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)

    def to_bytes(self) -> bytes:
        """Return the JSON bytes published as the Kafka record value."""
        return orjson.dumps(self.model_dump(mode="json"))


@dataclass(frozen=True, slots=True)
class Letter:
    """One record for the dead-letter topic: its Kafka key, value and headers."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    truncated: tuple[str, ...]  # "key", "value": which copies are cut or left out


def dead_letter(
    *,
    component: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    error_type: str,
    failed_at: int,
    copies: bool = True,
) -> Letter:
    """Return the bounded dead letter of the record at ``topic[partition]@offset``.

    With ``copies`` the key and value are copied up to their limits; without, neither is
    (``key_b64``/``value_b64`` are then null and the headers say both were left out).
    The letter's own Kafka key is the original key up to :data:`KEY_COPY_LIMIT` bytes.
    """
    key_size = 0 if key is None else len(key)
    value_size = 0 if value is None else len(value)
    key_limit = KEY_COPY_LIMIT if copies else 0
    value_limit = VALUE_COPY_LIMIT if copies else 0
    sizes = (("key", key_size, key_limit), ("value", value_size, value_limit))
    truncated = tuple(name for name, size, limit in sizes if size > limit)
    headers: list[tuple[str, bytes]] = []
    if truncated:
        kept = ", ".join(
            f"{name} {min(size, limit)} of {size} bytes"
            for name, size, limit in sizes
            if name in truncated
        )
        reason = (
            f"{reason} [copy truncated: {kept} kept; the original is at "
            f"{topic}[{partition}]@{offset} until that topic's retention]"
        )
        headers = [
            (TRUNCATED_HEADER, ",".join(truncated).encode()),
            (KEY_BYTES_HEADER, str(key_size).encode()),
            (VALUE_BYTES_HEADER, str(value_size).encode()),
        ]
    letter = DeadLetter(
        reason=reason,
        error_type=error_type,
        component=component,
        topic=topic,
        partition=partition,
        offset=offset,
        key_b64=DeadLetter.encode_bytes(key[:key_limit] if key is not None and copies else None),
        value_b64=DeadLetter.encode_bytes(
            value[:value_limit] if value is not None and copies else None
        ),
        failed_at=failed_at,
    )
    record_key = None if key is None else key[:KEY_COPY_LIMIT]
    return Letter(record_key, letter.to_bytes(), headers, truncated)
