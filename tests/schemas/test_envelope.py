"""The envelope's wire format and its poison handling."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

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
    {"kind": "message", "psid": "2", "mid": "m_3", "raw": {"at": dt.datetime(2026, 1, 1)}},
]


@pytest.mark.parametrize("fields", _BUILDS)
def test_fast_paths_equal_validation(fields: dict[str, Any]) -> None:
    kw: dict[str, Any] = {"page_id": "1", "occurred_at": 5, "source": "crawler", "raw": {}}
    env = Envelope.build(**(kw | fields))
    # What build() returned before its fast path: the model validated from its fields.
    validated = Envelope(**env.model_dump(exclude={"schema_version"}))
    assert env == validated
    assert env.model_fields_set == validated.model_fields_set
    assert env.to_bytes() == orjson.dumps(validated.model_dump(mode="json"))
    assert Envelope.from_bytes(env.to_bytes()).to_bytes() == env.to_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        {"psid": "x" * 65},
        {"page_id": ""},
        {"occurred_at": -1},
        {"watermark": -1, "kind": "read"},
        {"source": "elsewhere"},
        {"direction": "sideways"},
        {"raw": ["not", "an", "object"]},
    ],
)
def test_build_still_validates(bad: dict[str, Any]) -> None:
    kw: dict[str, Any] = {
        "kind": "message",
        "page_id": "1",
        "psid": "2",
        "mid": "m_1",
        "occurred_at": 5,
        "source": "webhook",
        "raw": {},
    }
    with pytest.raises(ValidationError):
        Envelope.build(**(kw | bad))
