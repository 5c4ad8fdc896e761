"""Dead letters of the change stream: whole copies when they fit, marked prefixes if not."""

from __future__ import annotations

from aiokafka.errors import MessageSizeTooLargeError  # type: ignore[import-untyped]
from faust.exceptions import ProducerSendError

from convsync.errors import PoisonError
from schemas.records import DeadLetter
from streams.deadletter import (
    KEY_COPY_LIMIT,
    TRUNCATED_HEADER,
    VALUE_COPY_LIMIT,
    Letter,
    dead_letter,
    too_large,
)


def make_letter(key: bytes | None, value: bytes | None, *, copies: bool = True) -> Letter:
    return dead_letter(
        topic="t.events",
        partition=1,
        offset=42,
        key=key,
        value=value,
        error=PoisonError("not a valid envelope"),
        failed_at=1,
        copies=copies,
    )


def letter_of(key: bytes | None, value: bytes | None, *, copies: bool = True) -> DeadLetter:
    letter = make_letter(key, value, copies=copies)
    doc = DeadLetter.model_validate_json(letter.value)
    assert dict(letter.headers).get(TRUNCATED_HEADER, b"").decode() == ",".join(letter.truncated)
    return doc


def test_a_small_record_is_copied_whole_and_unmarked() -> None:
    doc = letter_of(b"p0", b"{bad")
    assert (doc.original_value(), doc.key_b64) == (b"{bad", DeadLetter.encode_bytes(b"p0"))
    assert doc.reason == "not a valid envelope"
    assert letter_of(None, None).value_b64 is None


def test_a_large_record_keeps_a_marked_prefix_under_the_record_limit() -> None:
    value = b"v" * 800_000
    key = b"k" * (KEY_COPY_LIMIT + 1)
    letter = make_letter(key, value)
    assert letter.truncated == ("key", "value")
    assert len(letter.value) < 500_000  # a whole copy would be 1.07 MB
    assert letter.key == key[:KEY_COPY_LIMIT]
    doc = DeadLetter.model_validate_json(letter.value)
    assert doc.original_value() == value[:VALUE_COPY_LIMIT]
    assert f"value {VALUE_COPY_LIMIT} of 800000 bytes" in doc.reason
    assert "t.events[1]@42" in doc.reason


def test_without_copies_neither_key_nor_value_is_kept() -> None:
    doc = letter_of(b"p0", b"{bad", copies=False)
    assert doc.key_b64 is None and doc.value_b64 is None
    assert "key 0 of 2 bytes, value 0 of 4 bytes" in doc.reason


def test_size_errors_are_recognised_through_faust_wrapping() -> None:
    try:
        try:
            raise MessageSizeTooLargeError("too big")
        except MessageSizeTooLargeError as e:
            raise ProducerSendError("Error while sending") from e
    except ProducerSendError as wrapped:
        assert too_large(wrapped)
    assert not too_large(ProducerSendError("timed out"))
