"""Property tests of the deterministic event-id rule (DESIGN.md decision 3)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import Envelope
from schemas.event_id import detail_digest, make_event_id

ids = st.text(alphabet="0123456789", min_size=1, max_size=17)
mids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-", min_size=1, max_size=40)
ms = st.integers(min_value=0, max_value=4_102_444_800_000)
texts = st.text(max_size=50)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=10))
json_obj = st.recursive(
    st.dictionaries(st.text(max_size=8), json_leaf, max_size=5),
    lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _shuffled(obj: Any, rnd: random.Random) -> Any:
    """Return ``obj`` with every dict's keys in a random order."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [_shuffled(v, rnd) for v in obj]
    return obj


@given(page=ids, psid=ids, mid=mids, t1=ms, t2=ms, text1=texts, text2=texts)
def test_message_id_ignores_source_time_text_and_direction(
    page: str, psid: str, mid: str, t1: int, t2: int, text1: str, text2: str
) -> None:
    a = Envelope.build(
        kind="message",
        page_id=page,
        psid=psid,
        mid=mid,
        occurred_at=t1,
        source="webhook",
        direction="inbound",
        text=text1,
        raw={"x": 1},
    )
    b = Envelope.build(
        kind="message",
        page_id=page,
        psid=psid,
        mid=mid,
        occurred_at=t2,
        source="crawler",
        direction="outbound",
        text=text2,
        raw={"y": 2},
    )
    assert a.event_id == b.event_id


@given(page=ids, psid=ids, mid1=mids, mid2=mids)
def test_different_messages_differ(page: str, psid: str, mid1: str, mid2: str) -> None:
    a = make_event_id("message", page_id=page, psid=psid, mid=mid1)
    b = make_event_id("message", page_id=page, psid=psid, mid=mid2)
    assert (a == b) == (mid1 == mid2)


@given(page1=ids, page2=ids, mid=mids)
def test_page_is_part_of_identity(page1: str, page2: str, mid: str) -> None:
    a = make_event_id("message", page_id=page1, psid="1", mid=mid)
    b = make_event_id("message", page_id=page2, psid="1", mid=mid)
    assert (a == b) == (page1 == page2)


@given(page=ids, psid=ids, w1=ms, w2=ms)
def test_watermarks(page: str, psid: str, w1: int, w2: int) -> None:
    for kind in ("read", "delivery"):
        a = make_event_id(kind, page_id=page, psid=psid, watermark=w1)  # type: ignore[arg-type]
        b = make_event_id(kind, page_id=page, psid=psid, watermark=w2)  # type: ignore[arg-type]
        assert (a == b) == (w1 == w2)
    assert make_event_id("read", page_id=page, psid=psid, watermark=w1) != make_event_id(
        "delivery", page_id=page, psid=psid, watermark=w1
    )


@given(item=json_obj, seed=st.integers(0, 2**32), t=ms, page=ids, psid=ids)
def test_detail_digest_ignores_field_order(
    item: dict[str, Any], seed: int, t: int, page: str, psid: str
) -> None:
    reordered = _shuffled(item, random.Random(seed))
    assert orjson.dumps(reordered) == orjson.dumps(reordered)  # valid JSON either way
    a = make_event_id("unknown", page_id=page, psid=psid, occurred_at=t, detail=detail_digest(item))
    b = make_event_id(
        "unknown", page_id=page, psid=psid, occurred_at=t, detail=detail_digest(reordered)
    )
    assert a == b


@given(a=json_obj, b=json_obj, t=ms)
def test_different_details_differ(a: dict[str, Any], b: dict[str, Any], t: int) -> None:
    same = orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        b, option=orjson.OPT_SORT_KEYS
    )
    ia = make_event_id("optin", page_id="1", psid="2", occurred_at=t, detail=detail_digest(a))
    ib = make_event_id("optin", page_id="1", psid="2", occurred_at=t, detail=detail_digest(b))
    assert (ia == ib) == same


def test_routing_fields_do_not_count_in_details() -> None:
    a = {"sender": {"id": "1"}, "recipient": {"id": "2"}, "timestamp": 5, "optin": {"ref": "x"}}
    b = {"optin": {"ref": "x"}, "timestamp": 6, "sender": {"id": "1"}, "recipient": {"id": "2"}}
    assert detail_digest(a) == detail_digest(b)
    assert detail_digest(a) != detail_digest({**a, "optin": {"ref": "y"}})


@given(page=ids, psid=ids, mid=mids, t1=ms, t2=ms)
def test_reaction_includes_time_and_action(
    page: str, psid: str, mid: str, t1: int, t2: int
) -> None:
    react = make_event_id(
        "reaction", page_id=page, psid=psid, mid=mid, occurred_at=t1, detail="react:❤"
    )
    unreact = make_event_id(
        "reaction", page_id=page, psid=psid, mid=mid, occurred_at=t1, detail="unreact:❤"
    )
    later = make_event_id(
        "reaction", page_id=page, psid=psid, mid=mid, occurred_at=t2, detail="react:❤"
    )
    assert react != unreact
    assert (react == later) == (t1 == t2)


def test_postback_with_mid_is_named_by_it() -> None:
    a = make_event_id("postback", page_id="1", psid="2", mid="m_1", occurred_at=1, detail="a")
    b = make_event_id("postback", page_id="1", psid="2", mid="m_1", occurred_at=2, detail="b")
    assert a == b


def test_kinds_never_collide() -> None:
    seen = {
        make_event_id("message", page_id="1", psid="2", mid="m"),
        make_event_id("edit", page_id="1", psid="2", mid="m", detail="1"),
        make_event_id("postback", page_id="1", psid="2", mid="m"),
    }
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("message", {}),
        ("unsend", {"occurred_at": 1}),
        ("read", {"occurred_at": 1}),
        ("delivery", {}),
        ("reaction", {"mid": "m"}),
        ("unknown", {}),
    ],
)
def test_missing_identity_fields_are_an_error(kind: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="needs"):
        make_event_id(kind, page_id="1", psid="2", **kwargs)  # type: ignore[arg-type]


def test_id_format_is_stable() -> None:
    # Pins the rule: changing it silently would duplicate every stored event.
    assert make_event_id("message", page_id="100", psid="200", mid="m_abc") == (
        "ev1_" + __import__("hashlib").sha256(b'["message","100","m_abc"]').hexdigest()[:32]
    )


def test_an_unsend_is_one_event_per_message_whoever_and_whenever() -> None:
    # Instagram's is_deleted: one per message; never the message's own id.
    a = make_event_id("unsend", page_id="178", psid="2", mid="aWdf1", occurred_at=5)
    b = make_event_id("unsend", page_id="178", psid="3", mid="aWdf1", occurred_at=9)
    assert a == b
    assert a != make_event_id("message", page_id="178", psid="2", mid="aWdf1")
    assert a != make_event_id("unsend", page_id="178", psid="2", mid="aWdf2")
    assert a == "ev1_" + __import__("hashlib").sha256(b'["unsend","178","aWdf1"]').hexdigest()[:32]
