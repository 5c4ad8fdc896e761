"""The envelope's wire format and its poison handling."""

from __future__ import annotations

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


def test_unknown_fields_are_poison() -> None:
    data = _env().to_bytes().replace(b'"kind"', b'"surprise":1,"kind"', 1)
    with pytest.raises(PoisonError, match="surprise"):
        Envelope.from_bytes(data)


def test_json_schemas_are_current() -> None:
    assert stale() == [], "run `python -m schemas.jsonschema` and commit schemas/json/"
