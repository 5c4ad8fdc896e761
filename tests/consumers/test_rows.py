"""rows.decode: the msgspec fast path decides exactly as the pydantic envelope does."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumers.materializer.rows import Position, StageRow, decode, stage_row
from convsync.errors import PoisonError
from schemas.envelope import Envelope
from tests.consumers.helpers import random_events

POS = Position("t", 3, 42)
BASES = [e.to_bytes() for e in random_events(random.Random(5), pages=2, users=3, n=60)]
_DROP = object()

# Values on the edges of what either decoder accepts.
EDGES: list[Any] = [
    None, True, False, -1, 0, 1, 5.0, -0.0, 2.5, 253_402_300_799_999, 253_402_300_800_000,
    2**63, 2**64 - 1, "", "message", "edit", "read", "webhook", "crawler", "inbound",
    "outbound", "ev1_" + "a" * 32, "ev1_" + "A" * 32, "ev1_" + "a" * 32 + "\n",
    "ev1_" + "a" * 31, "x" * 64, "x" * 65, "é" * 64, "é" * 65, "nul\x00", "👋", [], [1],
    {}, {"num_edit": 2}, {"num_edit": True},
]  # fmt: skip
ODD = st.one_of(
    st.sampled_from(EDGES),
    st.none(),
    st.booleans(),
    st.integers(-3, 2**70),
    st.sampled_from([0, 1, 253_402_300_799_999, 253_402_300_800_000, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([5.0, 1e400, -0.0, 1e-400]),
    st.text(max_size=70),
    st.sampled_from(
        [
            "message",
            "edit",
            "read",
            "webhook",
            "crawler",
            "inbound",
            "outbound",
            "ev1_" + "a" * 32,
            "ev1_" + "A" * 32,
            "ev1_" + "a" * 32 + "\n",
            "x" * 64,
            "x" * 65,
            "é" * 64,
            "nul\x00",
            "👋",
            "",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.text(max_size=3))),
)
FIELDS = [*Envelope.model_fields, "surprise"]
# Raw JSON fragments orjson cannot produce from Python values (escapes, big numbers).
RAW_SNIPPETS = [
    b'"\\ud800"', b'"\\u0000"', b'"\\ud83d\\udc4b"', b"1e400", b"123456789012345678901234567890",
    b"1.0", b"-0", b"true", b'{"a":1,"a":2}', b"[]", b'"\\/"',
]  # fmt: skip


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("nested", [False, True])
def test_every_edge_value_in_every_field(field: str, nested: bool) -> None:
    for base in BASES[:6]:
        for edge in [_DROP, *EDGES]:
            data = orjson.loads(base)
            target = data["raw"] if nested else data
            if edge is _DROP:
                target.pop(field, None)
            else:
                target[field] = edge
            value = orjson.dumps(data)
            fast, model = _outcome(value, "fast"), _outcome(value, "model")
            assert fast == model, (field, edge, fast, model)


def _outcome(value: bytes | None, path: str) -> StageRow | str:
    try:
        if path == "fast":
            return decode(value, POS, 7)
        return stage_row(Envelope.from_bytes(value), POS, 7)
    except PoisonError:
        return "poison"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(BASES),
    edits=st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(st.just(_DROP), ODD)), max_size=3),
    snippet=st.none() | st.tuples(st.sampled_from(FIELDS), st.sampled_from(RAW_SNIPPETS)),
    nested=st.booleans(),
)
@example(base=BASES[0], edits=[], snippet=None, nested=False)
def test_fast_path_equals_the_model(
    base: bytes, edits: list[tuple[str, Any]], snippet: tuple[str, bytes] | None, nested: bool
) -> None:
    data = orjson.loads(base)
    for key, value in edits:
        target = data["raw"] if nested and isinstance(data.get("raw"), dict) else data
        if value is _DROP:
            target.pop(key, None)
        else:
            target[key] = value
    try:
        value = orjson.dumps(data)
    except orjson.JSONEncodeError:
        return  # an int beyond 64 bits: no producer writes one with orjson
    if snippet is not None:
        key, raw_json = snippet
        marker = b'"__snippet__"'
        target = data["raw"] if nested and isinstance(data.get("raw"), dict) else data
        target[key] = "__snippet__"
        value = orjson.dumps(data).replace(marker, raw_json, 1)
    assert _outcome(value, "fast") == _outcome(value, "model")


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\xff\xfe", b"[]", b"{}", b'{"kind": "message"}', BASES[0] + b"x"],
)
def test_bad_bytes_are_poison_on_both_paths(value: bytes | None) -> None:
    assert _outcome(value, "fast") == _outcome(value, "model") == "poison"


def test_producer_records_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [stage_row(Envelope.from_bytes(v), POS, 7) for v in BASES]

    def refuse(*_: object) -> Envelope:
        raise AssertionError("the pydantic model was asked")

    monkeypatch.setattr(Envelope, "from_bytes", refuse)
    assert [decode(v, POS, 7) for v in BASES] == expected
