"""Property tests: the conversation fold is the same for any order and any duplicates."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.copies import TEXT_CAP
from schemas.envelope import Envelope
from schemas.fold import ConversationState, apply, project

PAGE = "p1"


# Two texts longer than TEXT_CAP that share their first TEXT_CAP bytes: ordered by
# digest, not code points (what a stream that keeps cut texts can still order).
LONG_TEXTS = ("é" * (TEXT_CAP // 2) + "tail a", "é" * (TEXT_CAP // 2) + "tail b")


@st.composite
def facts(draw: st.DrawFn) -> Envelope:
    """One copy of a fact as the webhook or the crawler would send it."""
    kind = draw(
        st.sampled_from(
            ["message", "message", "message", "edit", "read", "delivery", "reaction", "optin"]
        )
    )
    n_mid = draw(st.integers(0, 6))
    mid = f"m{n_mid}"
    # One mid is one message: one user, time, text and direction. Its copies differ by
    # what their source knows: the webhook's has the time in ms; the crawler's has
    # Graph's whole seconds, the thread id, and past Graph's detail window no sender
    # (direction) and no text; an imported one (another inbox's history) has the time in
    # ms, text and direction, no thread id.
    psid = "u1" if n_mid % 2 else "u2"
    t = 1_000_000 + (n_mid * 7) % 11 * 1_000 + (n_mid * 373) % 1_000
    if kind == "message":
        source = draw(st.sampled_from(["webhook", "crawler", "crawler_bare", "import"]))
        direction = "inbound" if n_mid % 3 else "outbound"
        text = [None, "hi", "yo"][n_mid % 3]
        if source in ("crawler", "crawler_bare"):
            t -= t % 1_000
        if source == "crawler_bare":
            direction, text = None, None
        return Envelope.build(
            kind="message",
            page_id=PAGE,
            psid=psid,
            mid=mid,
            occurred_at=t,
            source="crawler" if source == "crawler_bare" else source,  # type: ignore[arg-type]
            direction=direction,  # type: ignore[arg-type]
            text=text,
            thread_id=(
                draw(st.sampled_from([None, f"t_{psid}"])) if source.startswith("crawler") else None
            ),
            raw={},
        )
    psid = draw(st.sampled_from(["u1", "u2"]))
    t = draw(st.integers(1_000_000, 1_012_000))
    if kind == "edit":
        n = draw(st.integers(1, 3))
        return Envelope.build(
            kind="edit",
            page_id=PAGE,
            psid=psid,
            mid=mid,
            occurred_at=t,
            source="webhook",
            text=f"edit{n}",
            attrs={"num_edit": n},
            detail=str(n),
            raw={},
        )
    if kind in ("read", "delivery"):
        return Envelope.build(
            kind=kind,
            page_id=PAGE,
            psid=psid,
            occurred_at=t,
            watermark=draw(st.integers(900, 1_100)),
            source="webhook",
            raw={},
        )
    if kind == "reaction":
        return Envelope.build(
            kind="reaction",
            page_id=PAGE,
            psid=psid,
            mid=mid,
            occurred_at=t,
            source="webhook",
            detail="react:x",
            raw={},
        )
    return Envelope.build(
        kind="optin", page_id=PAGE, psid=psid, occurred_at=t, source="webhook", detail="d", raw={}
    )


@st.composite
def events(draw: st.DrawFn) -> Envelope:
    """A copy of a fact; a third of them conflict on purpose with the fact's other copies
    (bad data): the same event id with another user, text, direction, time, thread id,
    edit number, source or payload, for every kind."""
    event = draw(facts())
    if draw(st.integers(0, 2)):
        return event
    changes = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "psid": st.sampled_from(["u1", "u2", "u3"]),
                "text": st.sampled_from([None, "a", "b", "ß ✓", *LONG_TEXTS]),
                "direction": st.sampled_from([None, "inbound", "outbound"]),
                "occurred_at": st.integers(999_000, 1_013_000),
                "thread_id": st.sampled_from([None, "t_1", "t_2"]),
                "attrs": st.sampled_from([{}, {"num_edit": 1}, {"num_edit": 7}, {"x": 1}]),
                "source": st.sampled_from(["webhook", "crawler"]),
                "raw": st.sampled_from([{}, {"a": 1}, {"b": [1, 2]}]),
            },
        )
    )
    return msgspec.structs.replace(event, **changes)


def _public(states: dict[tuple[str, str], ConversationState]) -> dict[tuple[str, str], object]:
    return {k: v.public() for k, v in states.items()}


@settings(max_examples=300)
@given(
    evs=st.lists(events(), max_size=40),
    seed=st.integers(0, 2**32),
    dup=st.lists(st.integers(0, 39), max_size=10),
)
def test_any_order_any_duplicates_same_state(
    evs: list[Envelope], seed: int, dup: list[int]
) -> None:
    shuffled = list(evs) + [evs[i] for i in dup if i < len(evs)]
    random.Random(seed).shuffle(shuffled)
    assert _public(project(shuffled)) == _public(project(evs))


def test_rules_by_example() -> None:
    def msg(mid: str, t: int, direction: str, text: str) -> Envelope:
        return Envelope.build(
            kind="message",
            page_id=PAGE,
            psid="u",
            mid=mid,
            occurred_at=t,
            source="webhook",
            direction=direction,
            text=text,  # type: ignore[arg-type]
            raw={},
        )

    edit = Envelope.build(
        kind="edit",
        page_id=PAGE,
        psid="u",
        mid="m2",
        occurred_at=30,
        source="webhook",
        text="fixed",
        attrs={"num_edit": 1},
        detail="1",
        raw={},
    )
    read = Envelope.build(
        kind="read", page_id=PAGE, psid="u", occurred_at=40, watermark=25, source="webhook", raw={}
    )
    # The edit arrives before the message it targets.
    state = project(
        [msg("m1", 10, "inbound", "hello"), edit, msg("m2", 20, "outbound", "tpyo"), read]
    )[(PAGE, "u")]
    assert state.public() == {
        "page_id": PAGE,
        "psid": "u",
        "thread_id": None,
        "first_message_at": 10,
        "last_message_at": 20,
        "message_count": 2,
        "last_message_text": "fixed",
        "last_inbound_at": 10,
        "last_outbound_at": 20,
        "needs_reply": False,
        "read_watermark": 25,
        "delivered_watermark": None,
    }
    later = apply(state, msg("m3", 50, "inbound", "are you there?"))
    assert later.needs_reply
    assert later.last_message_text == "are you there?"
    assert later.message_count == 3


def test_one_edit_id_in_two_conversations_is_a_fact_of_each() -> None:
    # An edit's event id is [edit, page, mid, num_edit]: no psid. Two copies of one edit
    # naming two users (bad data) used to be deduped across conversations, so which
    # conversation got the edit depended on the order (CI failed once on this).
    def message(psid: str) -> Envelope:
        return Envelope.build(
            kind="message", page_id=PAGE, psid=psid, mid="m1", occurred_at=10,
            source="webhook", direction="inbound", text="typo", raw={},
        )  # fmt: skip

    def edit(psid: str, text: str) -> Envelope:
        return Envelope.build(
            kind="edit", page_id=PAGE, psid=psid, mid="m1", occurred_at=20,
            source="webhook", text=text, attrs={"num_edit": 1}, detail="1", raw={},
        )  # fmt: skip

    a, b = edit("u1", "fixed for u1"), edit("u2", "fixed for u2")
    assert a.event_id == b.event_id
    evs = [message("u1"), message("u2"), a, b]
    for order in (evs, evs[::-1], [b, a, *evs[:2]]):
        states = project(order)
        assert states[(PAGE, "u1")].last_message_text == "fixed for u1"
        assert states[(PAGE, "u2")].last_message_text == "fixed for u2"
