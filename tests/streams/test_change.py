"""The change-stream fold: agrees with the reference fold, dedupes, numbers changes."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.conversation import ConversationChange
from schemas.envelope import Envelope
from schemas.fold import project
from streams.change import (
    Step,
    StreamState,
    decode_state,
    digest,
    encode_change,
    encode_state,
    step,
    to_record,
)
from tests.schemas.test_fold import events
from tests.streams.events import conversation_events


def fold_all(evs: list[Envelope]) -> tuple[dict[str, StreamState], list[ConversationChange]]:
    states: dict[str, StreamState] = {}
    records: list[ConversationChange] = []
    for ev in evs:
        key = f"{ev.page_id}:{ev.psid}"
        result = step(states.get(key), ev)
        states[key] = result.state
        if result.emitted:
            records.append(to_record(result, ev))
    return states, records


def msg(mid: str, t: int, direction: str, *, thread: str | None = None) -> Envelope:
    return Envelope.build(
        kind="message",
        page_id="p",
        psid="u",
        mid=mid,
        occurred_at=t,
        source="crawler" if thread else "webhook",
        direction=direction,  # type: ignore[arg-type]
        text=mid,
        thread_id=thread,
        raw={},
    )


def test_changes_of_a_conversation() -> None:
    read = Envelope.build(
        kind="read", page_id="p", psid="u", occurred_at=40, watermark=30, source="webhook", raw={}
    )
    evs = [
        msg("a", 10, "inbound"),
        msg("a", 10, "inbound"),  # Meta's retry
        msg("b", 20, "outbound"),
        msg("c", 30, "inbound"),
        read,
        msg("a", 10, "inbound", thread="t_1"),  # the crawler's copy teaches the thread
        read,
    ]
    _, records = fold_all(evs)
    assert [(r.seq, r.changes) for r in records] == [
        (1, ["created", "message", "needs_reply"]),
        (2, ["message", "replied"]),
        (3, ["message", "needs_reply"]),
        (4, ["read"]),
        (5, ["thread"]),
    ]
    last = records[-1]
    assert (last.thread_id, last.message_count, last.last_message_text) == ("t_1", 3, "c")
    assert last.needs_reply and last.read_watermark == 30


def test_an_event_that_changes_nothing_visible_emits_nothing() -> None:
    first = msg("a", 10, "inbound")
    reaction = Envelope.build(
        kind="reaction",
        page_id="p",
        psid="u",
        mid="a",
        occurred_at=11,
        source="webhook",
        detail="react:x",
        raw={},
    )
    s1 = step(None, first)
    s2 = step(s1.state, reaction)
    # A reaction is not part of the state: folding it adds nothing, so nothing is kept.
    assert not s2.emitted and s2.duplicate and s2.state is s1.state and s2.state.seq == 1
    s3 = step(s2.state, reaction)
    assert s3.duplicate and s3.state is s2.state


def test_a_reaction_first_creates_the_conversation() -> None:
    reaction = Envelope.build(
        kind="reaction",
        page_id="p",
        psid="u",
        mid="a",
        occurred_at=11,
        source="webhook",
        detail="react:x",
        raw={},
    )
    result = step(None, reaction)
    assert result.changes == ("created",)
    assert to_record(result, reaction).message_count == 0


def _copy(
    t: int,
    source: str,
    thread: str | None,
    *,
    direction: str | None = "inbound",
    text: str | None = "hi",
) -> Envelope:
    return Envelope.build(
        kind="message",
        page_id="p",
        psid="u",
        mid="m.1",
        occurred_at=t,
        source=source,  # type: ignore[arg-type]
        direction=direction,  # type: ignore[arg-type]
        text=text,
        thread_id=thread,
        raw={},
    )


def test_the_webhook_copy_after_the_crawlers_copy_counts_once_and_moves_the_times() -> None:
    # One message: the crawler's copy (Graph's created_time, whole seconds) folded first,
    # then the webhook's (ms): same event id. It is one message (it was once counted
    # twice), and its exact time is a fact the fold reads (it was once dropped, so the
    # state depended on which copy came first).
    crawled = _copy(1_767_225_656_000, "crawler", "t_1")
    hooked = _copy(1_767_225_656_789, "webhook", None)
    assert crawled.event_id == hooked.event_id
    first = step(None, crawled)
    second = step(first.state, hooked)
    conv = second.state.conversation
    assert conv.message_count == 1
    assert conv.last_message_at == conv.last_inbound_at == 1_767_225_656_789
    assert conv.first_message_at == 1_767_225_656_000
    assert second.changes == ("message",) and not second.duplicate
    assert conv.public() == project([hooked, crawled])[("p", "u")].public()
    # The same copy again adds nothing.
    third = step(second.state, hooked)
    assert third.duplicate and third.changes == () and third.state is second.state


def test_a_crawled_copy_without_details_then_the_webhook_copy() -> None:
    # The crawler read the message past Graph's detail window: no sender, no text. The
    # webhook's copy arriving later brings both: the user is waiting for a reply. The
    # old fold kept the first copy only: no text, needs_reply false.
    bare = _copy(1_767_225_656_000, "crawler", "t_1", direction=None, text=None)
    reply = Envelope.build(
        kind="message", page_id="p", psid="u", mid="m.0", occurred_at=1_767_225_656_300,
        source="webhook", direction="outbound", text="how can we help?", raw={},
    )  # fmt: skip
    hooked = _copy(1_767_225_656_789, "webhook", None)
    states, _ = fold_all([bare, reply, hooked])
    conv = states["p:u"].conversation
    assert conv.last_message_text == "hi"
    assert conv.needs_reply is True
    assert conv.message_count == 2
    for order in ([hooked, reply, bare], [reply, bare, hooked]):
        other, _ = fold_all(order)
        assert other["p:u"].conversation.public() == conv.public()


def test_same_state_as_the_reference_fold_for_crawler_and_webhook_copies() -> None:
    # The generator's crawler copies have second-truncated times and come first half of
    # the time: the fold in arrival order equals the reference fold in that order.
    for seed in range(5):
        evs = conversation_events(random.Random(seed), pages=2, users=3, messages=300)
        states, _ = fold_all(evs)
        assert {k: s.conversation.public() for k, s in states.items()} == {
            f"{p}:{u}": s.public() for (p, u), s in project(evs).items()
        }


@settings(max_examples=150, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_same_state_as_the_reference_fold_in_any_order(
    evs: list[Envelope], rnd: random.Random
) -> None:
    # The shared strategy may give one edit id (kind, page, mid, num_edit) to two users;
    # in Meta's data a mid has one conversation, and so does an event id.
    owner = {}
    for ev in evs:
        owner.setdefault(ev.event_id, (ev.page_id, ev.psid))
    evs = [ev for ev in evs if owner[ev.event_id] == (ev.page_id, ev.psid)]
    shuffled = evs + [rnd.choice(evs) for _ in range(len(evs) // 2)]
    rnd.shuffle(shuffled)
    states, records = fold_all(shuffled)
    reference = project(evs)
    assert {k: s.conversation.public() for k, s in states.items()} == {
        f"{p}:{u}": s.public() for (p, u), s in reference.items()
    }
    # seq counts the records of each key: 1, 2, 3... and the last record is the state.
    by_key: dict[str, list[ConversationChange]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    for key, rs in by_key.items():
        assert [r.seq for r in rs] == list(range(1, len(rs) + 1))
        last = rs[-1].model_dump(include=set(states[key].conversation.public()))
        assert last == states[key].conversation.public()


@settings(max_examples=50, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30))
def test_state_codec_round_trips(evs: list[Envelope]) -> None:
    states, _ = fold_all(evs)
    for state in states.values():
        assert decode_state(encode_state(state)) == state


def test_replay_from_a_recovered_state_repeats_the_same_records() -> None:
    evs = conversation_events(random.Random(7), pages=2, users=3, messages=120)
    _, records = fold_all(evs)
    cut = 70
    states, _ = fold_all(evs[:cut])
    recovered = {k: decode_state(encode_state(s)) for k, s in states.items()}
    replayed: list[ConversationChange] = []
    for ev in evs[cut:]:
        key = f"{ev.page_id}:{ev.psid}"
        result: Step = step(recovered.get(key), ev)
        recovered[key] = result.state
        if result.emitted:
            replayed.append(to_record(result, ev))
    assert replayed == records[len(records) - len(replayed) :]


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_only_distinct_messages_are_remembered(evs: list[Envelope], rnd: random.Random) -> None:
    shuffled = evs + [rnd.choice(evs) for _ in range(len(evs))]
    rnd.shuffle(shuffled)
    states, _ = fold_all(shuffled)
    for key, state in states.items():
        messages = {
            digest(ev.event_id)
            for ev in evs
            if ev.kind == "message" and f"{ev.page_id}:{ev.psid}" == key
        }
        # 8 bytes per distinct message, sorted; nothing for duplicates or other kinds.
        assert state.seen == b"".join(sorted(messages))


def test_a_state_in_the_first_format_still_dedupes() -> None:
    a, b = msg("a", 10, "inbound"), msg("b", 20, "outbound")
    state = step(step(None, a).state, b).state
    doc = orjson.loads(encode_state(state))
    doc["seen"] = [a.event_id[4:], b.event_id[4:]]  # the former list of ids
    old = decode_state(orjson.dumps(doc))
    assert old == state
    assert step(old, a).duplicate and step(old, b).duplicate


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_encode_change_equals_the_model(evs: list[Envelope], rnd: random.Random) -> None:
    shuffled = evs + [rnd.choice(evs) for _ in range(len(evs) // 2)]
    rnd.shuffle(shuffled)
    states: dict[str, StreamState] = {}
    for ev in shuffled:
        key = f"{ev.page_id}:{ev.psid}"
        result = step(states.get(key), ev)
        states[key] = result.state
        if result.emitted:
            assert encode_change(result, ev) == to_record(result, ev).to_bytes()
