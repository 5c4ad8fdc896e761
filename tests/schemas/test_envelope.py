"""The envelope's wire format and its poison handling."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from convsync.errors import PoisonError
from schemas.envelope import Envelope
from schemas.jsonschema import stale


def _env() -> Envelope:
    return Envelope.build(
        kind="message",
        page_id="1",
        psid="2",
        mid="m_1",
        occurred_at=5,
        source="webhook",
        direction="inbound",
        text="héllo 👋",
        raw={"message": {"mid": "m_1", "text": "héllo 👋"}},
    )


def test_round_trip_keeps_everything() -> None:
    env = _env()
    assert Envelope.from_bytes(env.to_bytes()) == env


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\xff\xfe", b"[]", b'{"kind": "message"}', b'{"schema_version": 2}'],
)
def test_bad_bytes_are_poison(value: bytes | None) -> None:
    with pytest.raises(PoisonError):
        Envelope.from_bytes(value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"psid":"', b'"psid":"\xed\xa0\x80'),  # a lone surrogate, UTF-8 encoded
        (b'"text":"', b'"text":"\xff'),
        (b'"raw":{', b'"raw":{"x":"\xc3",'),  # cut in the middle of a character
    ],
)
def test_strings_that_are_not_utf8_are_poison(old: bytes, new: bytes) -> None:
    data = _env().to_bytes().replace(old, new, 1)
    assert data != _env().to_bytes()
    with pytest.raises(PoisonError, match="not UTF-8"):
        Envelope.from_bytes(data)


def test_values_nested_too_deep_are_poison() -> None:
    data = (
        _env().to_bytes().replace(b'"raw":{', b'"raw":{"x":' + b"[" * 5000 + b"]" * 5000 + b",", 1)
    )
    with pytest.raises(PoisonError, match="nested too deep"):
        Envelope.from_bytes(data)


def test_unknown_fields_are_poison() -> None:
    data = _env().to_bytes().replace(b'"kind"', b'"surprise":1,"kind"', 1)
    with pytest.raises(PoisonError, match="surprise"):
        Envelope.from_bytes(data)


def test_json_schemas_are_current() -> None:
    assert stale() == [], "run `python -m schemas.jsonschema` and commit schemas/json/"


_BUILDS: list[dict[str, Any]] = [
    {"kind": "message", "psid": "2", "mid": "m_1", "text": "héllo 👋", "direction": "inbound"},
    {"kind": "read", "psid": "2", "watermark": 10**12, "attrs": {"n": [1, 2.5, None]}},
    {"kind": "message", "psid": "2", "mid": "m_2", "thread_id": "t_9", "direction": "outbound"},
    {"kind": "unknown", "psid": "_", "detail": "d", "attrs": {"reason": "x", "big": 2**62}},
    {"kind": "message", "psid": "2", "mid": "m_3", "raw": {"f": [0.1, 1e-7, -0.0, 2**64 - 1]}},
]


@pytest.mark.parametrize("fields", _BUILDS)
def test_the_wire_format_is_the_fields_in_order(fields: dict[str, Any]) -> None:
    kw: dict[str, Any] = {"page_id": "1", "occurred_at": 5, "source": "crawler", "raw": {}}
    env = Envelope.build(**(kw | fields))
    # The bytes published before the envelope was a msgspec Struct: orjson over the
    # fields in declaration order.
    assert env.to_bytes() == orjson.dumps({f: getattr(env, f) for f in env.__struct_fields__})
    assert list(orjson.loads(env.to_bytes())) == [
        "schema_version",
        "event_id",
        "kind",
        "page_id",
        "platform",
        "psid",
        "direction",
        "mid",
        "occurred_at",
        "text",
        "watermark",
        "thread_id",
        "source",
        "attrs",
        "raw",
    ]
    assert Envelope.from_bytes(env.to_bytes()) == env


def test_large_floats_are_written_without_a_plus_sign() -> None:
    # The one difference from the bytes orjson wrote: 1e+16 is now 1e16 (the same number).
    env = Envelope.build(
        kind="unknown", page_id="1", psid="2", occurred_at=5, source="webhook", raw={"f": 1e16}
    )
    assert b'"raw":{"f":1e16}' in env.to_bytes()
    assert Envelope.from_bytes(env.to_bytes()).raw == {"f": 1e16}


@pytest.mark.parametrize(
    "bad",
    [
        {"psid": "x" * 65},
        {"page_id": ""},
        {"page_id": 1},
        {"occurred_at": -1},
        {"occurred_at": True},
        {"watermark": -1, "kind": "read"},
        {"source": "elsewhere"},
        {"direction": "sideways"},
        {"kind": "nothing"},
        {"text": 5},
        {"raw": ["not", "an", "object"]},
    ],
)
def test_build_validates(bad: dict[str, Any]) -> None:
    kw: dict[str, Any] = {
        "kind": "message",
        "page_id": "1",
        "psid": "2",
        "mid": "m_1",
        "occurred_at": 5,
        "source": "webhook",
        "raw": {},
    }
    with pytest.raises(ValueError, match="not a valid envelope"):
        Envelope.build(**(kw | bad))
