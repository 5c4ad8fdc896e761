"""The page-body rules: what a body must be for its items to be mapped, and why not."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploy.simulator.webhooks import WebhookSender
from producers.webhook.payload import BadBodyError, Entry, parse_body


def test_simulated_bodies_keep_every_item_in_order() -> None:
    sender = WebhookSender("s", seed=3)
    for i in range(200):
        signed = sender.batch([str(100 + i % 7), "200"], items_per_page=1 + i % 4)
        entries = parse_body(signed.raw)
        assert [(e.id, e.messaging, e.standby) for e in entries] == [
            (e["id"], e.get("messaging", []), e.get("standby", [])) for e in signed.body["entry"]
        ]


@pytest.mark.parametrize(
    ("body", "entries"),
    [
        ({"object": "page", "entry": []}, []),
        (
            {"object": "page", "entry": [{"id": 5, "time": 7}], "extra_top": [1]},
            [Entry("5", 7, [], [], [])],
        ),
        (
            {"object": "page", "entry": [{"id": "5", "changes": [{"field": "feed"}]}]},
            [Entry("5", None, [], [], ["changes"])],
        ),
        (
            {"object": "page", "entry": [{"id": "5", "time": None, "standby": [{"a": 1}]}]},
            [Entry("5", None, [], [{"a": 1}], [])],
        ),
        ({"object": "page", "entry": [{"id": "x" * 64}]}, [Entry("x" * 64, None, [], [], [])]),
        ({"object": "page", "entry": [{"id": "٣"}]}, [Entry("٣", None, [], [], [])]),
        (
            {"object": "page", "entry": [{"id": "5", "hop_context": [1], "z": {}}], "z": 1},
            [Entry("5", None, [], [], ["hop_context", "z"])],
        ),
        # The entry's time is only the fallback time of its items: an unusable one is none.
        *(
            ({"object": "page", "entry": [{"id": "5", "time": t}]}, [Entry("5", None, [], [], [])])
            for t in (1.0, "7", True, -1, 2**53, [1])
        ),
    ],
)
def test_bodies_the_rules_accept(body: dict[str, Any], entries: list[Entry]) -> None:
    assert parse_body(orjson.dumps(body)) == entries


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not valid JSON"),
        (b"[1]", "body is not a JSON object"),
        (b'{"object": "user", "entry": []}', "object is not 'page' or 'instagram'"),
        (b'{"object": "page"}', "no entry list"),
        (b'{"object": "page", "entry": {}}', "no entry list"),
        (b'{"object": "page", "entry": ["x"]}', "not a page payload at entry.0"),
        (b'{"object": "page", "entry": [{"time": 1}]}', "not a page payload at entry.0.id"),
        (b'{"object": "page", "entry": [{"id": "p 5"}]}', "not a page payload at entry.0.id"),
        (b'{"object": "page", "entry": [{"id": true}]}', "not a page payload at entry.0.id"),
        (b'{"object": "page", "entry": [{"id": 1.0}]}', "not a page payload at entry.0.id"),
        (b'{"object": "page", "entry": [{"id": ""}]}', "not a page payload at entry.0.id"),
        (
            b'{"object": "page", "entry": [{"id": "' + b"1" * 65 + b'"}]}',
            "not a page payload at entry.0.id",
        ),
        (
            b'{"object": "page", "entry": [{"id": "5"}, {"id": "6", "messaging": null}]}',
            "not a page payload at entry.1.messaging",
        ),
        (
            b'{"object": "page", "entry": [{"id": "5", "messaging": [{}, 1]}]}',
            "not a page payload at entry.0.messaging.1",
        ),
        (
            b'{"object": "page", "entry": [{"id": "5", "standby": "not a list"}]}',
            "not a page payload at entry.0.standby",
        ),
        (b"[" * 101 + b"]" * 101, "body is not a JSON object"),
        (
            b'{"object": "page", "entry": [{"id": "5", "x": ' + b"[" * 99 + b"]" * 99 + b"}]}",
            "body nests deeper than 100 levels",
        ),
    ],
)
def test_bodies_the_rules_refuse_say_where(body: bytes, reason: str) -> None:
    with pytest.raises(BadBodyError) as caught:
        parse_body(body)
    assert caught.value.reason == reason


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["object", "entry", "x"]),
        st.just("page") | st.lists(st.dictionaries(st.text(max_size=9), json_values)),
    )
)
def test_any_body_is_either_entries_or_a_reason(body: dict[str, Any]) -> None:
    try:
        entries = parse_body(orjson.dumps(body))
    except BadBodyError as e:
        assert e.reason
        return
    assert body["object"] == "page"
    assert [e.id for e in entries] == [str(raw["id"]) for raw in body["entry"]]
