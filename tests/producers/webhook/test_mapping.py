"""Webhook items -> envelopes: every kind, the id rule, batching, malformed items."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.simulator.webhooks import WebhookSender, page_body
from producers.webhook.mapping import NO_PSID_PREFIX, ItemDefectError, map_body, map_item
from producers.webhook.payload import parse_body
from schemas.envelope import Envelope
from schemas.event_id import detail_digest, make_event_id

PAGE = "104000000000001"
USER = "7000000000000001"


def one(item: dict[str, Any], *, channel: str = "messaging") -> Envelope:
    env = map_item(PAGE, 1_700_000_000_000, item, channel)
    assert env.raw == item
    assert env.source == "webhook"
    assert env.page_id == PAGE
    assert Envelope.from_bytes(env.to_bytes()) == env
    return env


def route(ts: int | None = 1_700_000_000_123) -> dict[str, Any]:
    item: dict[str, Any] = {"sender": {"id": USER}, "recipient": {"id": PAGE}}
    if ts is not None:
        item["timestamp"] = ts
    return item


def test_message_with_quick_reply_reply_to_and_attachments() -> None:
    item = {
        **route(),
        "message": {
            "mid": "m_1",
            "text": "hi 👋",
            "quick_reply": {"payload": "YES"},
            "reply_to": {"mid": "m_0"},
            "attachments": [
                {"type": "image", "payload": {"url": "https://x/i.png"}},
                {"type": "fallback", "payload": {"url": "https://x/a", "title": "A link"}},
                {"type": "fallback", "title": "Old style", "url": "https://x/b", "payload": None},
                {
                    "type": "image",
                    "payload": {"url": "https://x/s.png", "sticker_id": 369239263222822},
                },
            ],
        },
    }
    env = one(item)
    assert (env.kind, env.psid, env.direction, env.mid, env.text) == (
        "message",
        USER,
        "inbound",
        "m_1",
        "hi 👋",
    )
    assert env.occurred_at == 1_700_000_000_123
    assert env.attrs["quick_reply_payload"] == "YES"
    assert env.attrs["reply_to_mid"] == "m_0"
    assert env.attrs["attachments"] == [
        {"type": "image", "url": "https://x/i.png"},
        {"type": "fallback", "url": "https://x/a", "title": "A link"},
        {"type": "fallback", "url": "https://x/b", "title": "Old style"},
        {"type": "image", "url": "https://x/s.png", "sticker_id": 369239263222822},
    ]
    assert env.event_id == make_event_id("message", page_id=PAGE, psid=USER, mid="m_1")


def test_echo_is_outbound_to_the_recipient_and_shares_the_message_id() -> None:
    item = {
        "sender": {"id": PAGE},
        "recipient": {"id": USER},
        "timestamp": 5,
        "message": {"mid": "m_1", "is_echo": True, "app_id": 42, "metadata": "bot", "text": "ok"},
    }
    env = one(item)
    assert (env.kind, env.psid, env.direction) == ("message", USER, "outbound")
    assert env.attrs == {"is_echo": True, "app_id": 42, "metadata": "bot"}
    inbound = one({**route(), "message": {"mid": "m_1", "text": "ok"}})
    assert env.event_id == inbound.event_id


def test_delivery_without_timestamp_uses_watermark() -> None:
    env = one({**route(None), "delivery": {"mids": ["m_1", "m_2"], "watermark": 1_700_000_000_999}})
    assert (env.kind, env.watermark, env.occurred_at) == (
        "delivery",
        1_700_000_000_999,
        1_700_000_000_999,
    )
    assert env.attrs["mids"] == ["m_1", "m_2"]
    assert env.event_id == make_event_id(
        "delivery", page_id=PAGE, psid=USER, watermark=1_700_000_000_999
    )


def test_read() -> None:
    env = one({**route(), "read": {"watermark": 1_700_000_000_100}})
    assert (env.kind, env.psid, env.watermark) == ("read", USER, 1_700_000_000_100)
    assert env.event_id == make_event_id(
        "read", page_id=PAGE, psid=USER, watermark=1_700_000_000_100
    )


def test_reaction_and_unreact_differ() -> None:
    body = {"reaction": "love", "emoji": "❤", "action": "react", "mid": "m_9"}
    react = one({**route(), "reaction": body})
    unreact = one({**route(), "reaction": {**body, "action": "unreact"}})
    assert (react.kind, react.mid, react.attrs["emoji"]) == ("reaction", "m_9", "❤")
    assert react.event_id == make_event_id(
        "reaction",
        page_id=PAGE,
        psid=USER,
        mid="m_9",
        occurred_at=1_700_000_000_123,
        detail="react:❤",
    )
    assert react.event_id != unreact.event_id


def test_message_edit() -> None:
    env = one({**route(), "message_edit": {"mid": "m_1", "text": "fixed", "num_edit": 2}})
    assert (env.kind, env.mid, env.text, env.attrs["num_edit"]) == ("edit", "m_1", "fixed", 2)
    assert env.event_id == make_event_id("edit", page_id=PAGE, psid=USER, mid="m_1", detail="2")


def test_postback_with_and_without_mid() -> None:
    with_mid = one({**route(), "postback": {"title": "Start", "payload": "GO", "mid": "m_p"}})
    assert (with_mid.kind, with_mid.mid, with_mid.text) == ("postback", "m_p", "Start")
    assert with_mid.event_id == make_event_id("postback", page_id=PAGE, psid=USER, mid="m_p")
    bare = one({**route(), "postback": {"title": "Start", "payload": "GO"}})
    assert bare.mid is None
    assert bare.event_id == make_event_id(
        "postback", page_id=PAGE, psid=USER, occurred_at=1_700_000_000_123, detail="GO"
    )


def test_referral_handover_optin_use_the_detail_digest() -> None:
    items = {
        "referral": {
            **route(),
            "referral": {"ref": "r", "source": "SHORTLINK", "type": "OPEN_THREAD"},
        },
        "pass": {**route(), "pass_thread_control": {"new_owner_app_id": "1", "metadata": "m"}},
        "take": {**route(), "take_thread_control": {"previous_owner_app_id": "1"}},
        "request": {**route(), "request_thread_control": {"requested_owner_app_id": "1"}},
        "optin": {**route(), "optin": {"ref": "x", "notification_messages_token": "tok"}},
    }
    seen = set()
    for name, item in items.items():
        env = one(item)
        expected_kind = name if name in ("referral", "optin") else "handover"
        assert env.kind == expected_kind
        if expected_kind == "handover":
            assert env.attrs["action"] == name
        assert env.event_id == make_event_id(
            env.kind,
            page_id=PAGE,
            psid=USER,
            occurred_at=1_700_000_000_123,
            detail=detail_digest(item),
        )
        seen.add(env.event_id)
    assert len(seen) == len(items)


def test_optin_token_stays_in_raw_only() -> None:
    env = one(
        {
            **route(),
            "optin": {"type": "notification_messages", "notification_messages_token": "tok"},
        }
    )
    assert "notification_messages_token" not in env.attrs
    assert env.raw["optin"]["notification_messages_token"] == "tok"


def test_checkbox_optin_names_the_user_by_user_ref() -> None:
    item = {
        "sender": {"user_ref": "ref-1"},
        "recipient": {"id": PAGE},
        "timestamp": 3,
        "optin": {"ref": "cb", "user_ref": "ref-1"},
    }
    env = one(item)
    assert (env.kind, env.psid) == ("optin", "user_ref:ref-1")


def test_unknown_kinds_keep_their_raw_json() -> None:
    item = {**route(), "account_linking": {"status": "linked", "authorization_code": "c"}}
    env = one(item)
    assert (env.kind, env.psid) == ("unknown", USER)
    roles = {"recipient": {"id": PAGE}, "timestamp": 4, "app_roles": {"123": ["primary_receiver"]}}
    env = one(roles)
    assert env.kind == "unknown"
    assert env.psid.startswith(NO_PSID_PREFIX)
    # Another item without a user is a conversation of its own; a retry of it is not.
    other = one({**roles, "app_roles": {"456": ["secondary_receiver"]}})
    assert other.psid.startswith(NO_PSID_PREFIX)
    assert other.psid != env.psid
    assert one(dict(roles)).psid == env.psid


def test_malformed_known_kinds_become_unknown_not_dropped() -> None:
    bad = [
        {**route(), "message": {"text": "no mid"}},
        {**route(), "message": "not an object"},
        {"recipient": {"id": PAGE}, "timestamp": 1, "message": {"mid": "m"}},
        {**route(), "read": {}},
        {**route(), "delivery": {"watermark": -1}},
        {**route(), "reaction": {"action": "react"}},
        {"sender": {"id": "x" * 65}, "recipient": {"id": PAGE}, "message": {"mid": "m"}},
    ]
    for item in bad:
        env = one(item)
        assert env.kind == "unknown"
        assert env.attrs["parse_error"]


def test_odd_optional_fields_are_ignored_not_fatal() -> None:
    for attachments in (5, "x", {"type": "image"}, [1, None, {"type": "file"}]):
        env = one({**route(), "message": {"mid": "m_a", "attachments": attachments}})
        assert env.kind == "message"
        assert env.attrs.get("attachments", []) in ([], [{"type": "file"}])


def test_standby_items_are_mapped_and_marked() -> None:
    env = one({**route(), "message": {"mid": "m_s", "text": "x"}}, channel="standby")
    assert (env.kind, env.attrs["channel"]) == ("message", "standby")
    assert env.event_id == make_event_id("message", page_id=PAGE, psid=USER, mid="m_s")


def test_same_message_in_differently_batched_bodies_has_one_id() -> None:
    sender = WebhookSender("s", seed=3)
    a = sender.message("1", "10", text="a")
    b = sender.message("2", "20", text="b")
    c = sender.read("1", "10")
    one_body = page_body([("1", [a, c], []), ("2", [b], [])], time=1)
    split = [
        page_body([("1", [a], [])], time=2),
        page_body([("2", [b], []), ("1", [c], [])], time=3),
    ]
    ids_one = {e.event_id for e in map_body(parse_body(orjson.dumps(one_body)))}
    ids_split = {e.event_id for body in split for e in map_body(parse_body(orjson.dumps(body)))}
    assert ids_one == ids_split
    assert len(ids_one) == 3


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=15,
)
known_keys = st.sampled_from(
    [
        "sender",
        "recipient",
        "timestamp",
        "message",
        "delivery",
        "read",
        "reaction",
        "message_edit",
        "postback",
        "referral",
        "optin",
        "pass_thread_control",
        "take_thread_control",
        "request_thread_control",
        "mid",
        "watermark",
        "is_echo",
        "id",
        "text",
        "num_edit",
    ]
)


@settings(max_examples=300)
@given(
    item=st.dictionaries(known_keys | st.text(max_size=6), json_value, max_size=6),
    channel=st.sampled_from(["messaging", "standby"]),
    t=st.none() | st.integers(0, 2**40),
)
def test_any_item_maps_to_exactly_one_envelope(
    item: dict[str, Any], channel: str, t: int | None
) -> None:
    env = map_item(PAGE, t, item, channel)
    assert env.raw == item
    assert Envelope.from_bytes(env.to_bytes()).event_id == env.event_id
    assert map_item(PAGE, t, item, channel).event_id == env.event_id


inner_keys = st.sampled_from(
    [
        "mid",
        "text",
        "is_echo",
        "app_id",
        "metadata",
        "quick_reply",
        "reply_to",
        "attachments",
        "watermark",
        "mids",
        "action",
        "emoji",
        "reaction",
        "num_edit",
        "title",
        "payload",
        "referral",
        "ref",
        "user_ref",
        "type",
        "url",
        "sticker_id",
    ]
)
inner = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(inner_keys | st.text(max_size=4), children, max_size=5)
    ),
    max_leaves=20,
)
kind_keys = st.sampled_from(
    [
        "message",
        "delivery",
        "read",
        "reaction",
        "message_edit",
        "postback",
        "referral",
        "optin",
        "pass_thread_control",
        "take_thread_control",
        "request_thread_control",
    ]
)
party = st.one_of(
    st.fixed_dictionaries({"id": st.one_of(st.text(max_size=70), json_leaf)}),
    st.fixed_dictionaries({"user_ref": json_leaf}),
    json_leaf,
)


@settings(max_examples=400)
@given(
    kind=kind_keys,
    body=st.dictionaries(inner_keys, inner, max_size=8) | inner,
    sender=party,
    recipient=party,
    ts=json_leaf,
)
def test_any_shaped_kind_body_maps_without_raising(
    kind: str, body: Any, sender: Any, recipient: Any, ts: Any
) -> None:
    item = {"sender": sender, "recipient": recipient, "timestamp": ts, kind: body}
    env = map_item(PAGE, None, item, "messaging")
    assert env.raw == item
    assert Envelope.from_bytes(env.to_bytes()).event_id == env.event_id


SIM_KINDS = [
    "message",
    "echo",
    "delivery",
    "read",
    "reaction",
    "edit",
    "postback",
    "referral",
    "handover",
    "optin",
    "unknown",
]


@settings(max_examples=500)
@given(
    kind=st.sampled_from(SIM_KINDS),
    seed=st.integers(0, 50),
    overrides=st.dictionaries(inner_keys, inner, min_size=1, max_size=4),
)
def test_valid_items_with_odd_optional_fields_map_without_raising(
    kind: str, seed: int, overrides: dict[str, Any]
) -> None:
    item = WebhookSender("s", seed=seed).item(kind, PAGE, USER)
    key = next(k for k in item if k not in ("sender", "recipient", "timestamp"))
    item[key] = {**item[key], **overrides}
    try:
        env = map_item(PAGE, None, item, "messaging")
    except ItemDefectError:
        # Only an item whose user would be the page itself: an echo's recipient, any
        # other item's sender (an echo made a user's message by the overrides).
        user_side = "recipient" if item[key].get("is_echo") is True else "sender"
        assert item[user_side] == {"id": PAGE}
        return
    assert env.raw == item
    assert Envelope.from_bytes(env.to_bytes()).event_id == env.event_id
