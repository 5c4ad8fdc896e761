"""Dead letters of the change stream: poison events on ``<prefix>.dlq``, bounded in size.

The bounding (copy limits, the headers that say what was cut, ``copies=False``) is
:func:`schemas.records.dead_letter`, shared with the materializer and the crawler; this
module names the component and recognises aiokafka's size errors.
"""

from __future__ import annotations

from typing import Final

from aiokafka.errors import (  # type: ignore[import-untyped]
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from schemas import records
from schemas.records import (
    KEY_BYTES_HEADER,
    KEY_COPY_LIMIT,
    TRUNCATED_HEADER,
    VALUE_BYTES_HEADER,
    VALUE_COPY_LIMIT,
    Letter,
)

__all__ = [
    "COMPONENT",
    "KEY_BYTES_HEADER",
    "KEY_COPY_LIMIT",
    "TRUNCATED_HEADER",
    "VALUE_BYTES_HEADER",
    "VALUE_COPY_LIMIT",
    "Letter",
    "dead_letter",
    "too_large",
]

COMPONENT: Final = "streams"


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
    """Return the dead letter of the record at ``topic[partition]@offset`` (see
    :func:`schemas.records.dead_letter`)."""
    return records.dead_letter(
        component=COMPONENT,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        reason=str(error),
        error_type=type(error).__name__,
        failed_at=failed_at,
        copies=copies,
    )


def too_large(error: BaseException) -> bool:
    """Return True if ``error`` (or what it wraps) says a record was over a size limit."""
    sizes = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sizes):
            return True
        seen = seen.__cause__
    return False
