"""Dead letters of the change stream: poison events on ``<prefix>.dlq``, bounded in size.

A dead letter carries the original key and value base64-encoded (4/3 of their size plus
the JSON around them). An event close to Kafka's 1 MB record limit would give a letter
over it: the producer refuses it, and a worker that cannot dead-letter a poison event
cannot move past it (it crashes and meets the same event again after every restart).
So a letter keeps at most :data:`VALUE_COPY_LIMIT` bytes of the value and
:data:`KEY_COPY_LIMIT` of the key, and says so: its ``reason`` tells a human, its Kafka
headers tell a program (``convsync-truncated`` names what was cut, ``convsync-key-bytes``
and ``convsync-value-bytes`` give the original sizes). The whole original stays at
``topic[partition]@offset`` until that topic's retention removes it. If Kafka refuses
even that letter (a ``<prefix>.dlq`` whose ``max.message.bytes`` is set lower), the
letter is sent again without copies (:func:`dead_letter` with ``copies=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiokafka.errors import (  # type: ignore[import-untyped]
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from schemas.records import DeadLetter

COMPONENT: Final = "streams"
VALUE_COPY_LIMIT: Final = 256 * 1024  # ~350 KB of base64: far under any record limit
KEY_COPY_LIMIT: Final = 1024
TRUNCATED_HEADER: Final = "convsync-truncated"
KEY_BYTES_HEADER: Final = "convsync-key-bytes"
VALUE_BYTES_HEADER: Final = "convsync-value-bytes"


@dataclass(frozen=True, slots=True)
class Letter:
    """One record for the dead-letter topic."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    truncated: tuple[str, ...]  # "key", "value": which copies are cut or left out


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: Exception,
    failed_at: int,
    copies: bool = True,
) -> Letter:
    """Return the dead letter of the record at ``topic[partition]@offset``.

    With ``copies`` the key and value are copied up to their limits; without, neither is
    (``key_b64``/``value_b64`` are then null and the headers say both were left out).
    The record's own Kafka key is the original key up to :data:`KEY_COPY_LIMIT` bytes.
    """
    key_size = 0 if key is None else len(key)
    value_size = 0 if value is None else len(value)
    key_limit = KEY_COPY_LIMIT if copies else 0
    value_limit = VALUE_COPY_LIMIT if copies else 0
    truncated = tuple(
        name
        for name, size, limit in (("key", key_size, key_limit), ("value", value_size, value_limit))
        if size > limit
    )
    reason = str(error)
    headers: list[tuple[str, bytes]] = []
    if truncated:
        kept = ", ".join(
            f"{name} {min(size, limit)} of {size} bytes"
            for name, size, limit in (
                ("key", key_size, key_limit),
                ("value", value_size, value_limit),
            )
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
        error_type=type(error).__name__,
        component=COMPONENT,
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


def too_large(error: BaseException) -> bool:
    """Return True if ``error`` (or what it wraps) says a record was over a size limit."""
    sizes = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sizes):
            return True
        seen = seen.__cause__
    return False
