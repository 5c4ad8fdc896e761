"""The change-stream fold: agrees with the reference fold, dedupes, numbers changes, and
keeps every record bounded."""

from __future__ import annotations

import base64
import random
from typing import Any

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.conversation import ConversationChange
from schemas.copies import TEXT_CAP, cut_text, text_digest, text_rank
from schemas.envelope import Envelope
from schemas.fold import ConversationState, project
from streams.change import (
    RECORD_BOUND,
    THREAD_CAP,
    MemorySide,
    Step,
    StreamState,
    encode_change,
    step,
    to_record,
)
from streams.change import public as to_public
from streams.codec import decode_state, encode_edit, encode_state
from streams.digests import CHUNK, digest
from tests.schemas.test_fold import LONG_TEXTS, events
from tests.streams.events import conversation_events

Records = list[ConversationChange]


def fold_all(
    evs: list[Envelope], side: MemorySide | None = None
) -> tuple[dict[str, StreamState], Records]:
    """Fold ``evs`` in order with the side tables in memory; return states and records."""
    side = MemorySide() if side is None else side
    states: dict[str, StreamState] = {}
    records: Records = []
    for ev in evs:
        key = f"{ev.page_id}:{ev.psid}"
        result = step(states.get(key), ev, side)
        side.record(result)
        states[key] = result.state
        if result.emitted:
            records.append(to_record(result, ev))
    return states, records


def capped(state: ConversationState) -> dict[str, Any]:
    """The reference state as a change record shows it: the text cut to TEXT_CAP bytes,
    the thread id to THREAD_CAP."""
    out: dict[str, Any] = {}
    for name, value in state.public().items():
        if name == "last_message_text":
            out[name] = None if value is None else cut_text(value)
            out["last_message_text_truncated"] = value is not None and out[name] != value
        elif name == "thread_id":
            out[name] = None if value is None else cut_text(value, THREAD_CAP)
        else:
            out[name] = value
    return out


def shown(states: dict[str, StreamState]) -> dict[str, dict[str, Any]]:
    return {k: to_public(s) for k, s in states.items()}


def reference(evs: list[Envelope]) -> dict[str, dict[str, Any]]:
    return {f"{p}:{u}": capped(s) for (p, u), s in project(evs).items()}


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


def edit(mid: str, num: int, text: str, *, psid: str = "u") -> Envelope:
    return Envelope.build(
        kind="edit", page_id="p", psid=psid, mid=mid, occurred_at=99, source="webhook",
        text=text, attrs={"num_edit": num}, detail=str(num), raw={},
    )  # fmt: skip


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
    assert not last.last_message_text_truncated


def test_an_event_that_changes_nothing_visible_emits_nothing() -> None:
    side = MemorySide()
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
    s1 = step(None, first, side)
    s2 = step(s1.state, reaction, side)
    # A reaction is not part of the state: folding it adds nothing, so nothing is kept.
    assert not s2.emitted and s2.duplicate and s2.state is s1.state and s2.state.seq == 1
    s3 = step(s2.state, reaction, side)
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
    result = step(None, reaction, MemorySide())
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
    side = MemorySide()
    crawled = _copy(1_767_225_656_000, "crawler", "t_1")
    hooked = _copy(1_767_225_656_789, "webhook", None)
    assert crawled.event_id == hooked.event_id
    first = step(None, crawled, side)
    second = step(first.state, hooked, side)
    conv = second.state.conversation
    assert conv.message_count == 1
    assert conv.last_message_at == conv.last_inbound_at == 1_767_225_656_789
    assert conv.first_message_at == 1_767_225_656_000
    assert second.changes == ("message",) and not second.duplicate
    assert conv.public() == project([hooked, crawled])[("p", "u")].public()
    # The same copy again adds nothing.
    third = step(second.state, hooked, side)
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
        assert shown(states) == reference(evs)


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_same_state_as_the_reference_fold_in_any_order(
    evs: list[Envelope], rnd: random.Random
) -> None:
    # The generator makes conflicting copies on purpose (one event id with another
    # user, text, direction, time, thread id, edit number...): each is a fact of the
    # conversation it names.
    shuffled = evs + [rnd.choice(evs) for _ in range(len(evs) // 2)]
    rnd.shuffle(shuffled)
    states, records = fold_all(shuffled)
    assert shown(states) == reference(evs)
    # seq counts the records of each key: 1, 2, 3... and the last record is the state.
    by_key: dict[str, list[ConversationChange]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    for key, rs in by_key.items():
        assert [r.seq for r in rs] == list(range(1, len(rs) + 1))
        last = rs[-1].model_dump(include=set(to_public(states[key])))
        assert last == to_public(states[key])


def _many(n: int, *, psid: str = "u", start: int = 0) -> list[Envelope]:
    return [
        msgspec.structs.replace(msg(f"m{i}", 1_000 + i, "inbound"), psid=psid)
        for i in range(start, start + n)
    ]


def _conversation(states: dict[str, StreamState], side: MemorySide, key: str = "p:u") -> set[bytes]:
    state = states[key]
    out = {state.open[i : i + 8] for i in range(0, len(state.open), 8)}
    for n in range(state.sealed):
        blob = side.chunks[(key, n)]
        out |= {blob[i : i + 8] for i in range(0, len(blob), 8)}
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 3 * CHUNK + 5),
    seed=st.integers(0, 2**32),
    dups=st.integers(0, 300),
)
def test_digests_are_inline_then_sealed_and_dedupe_exactly(n: int, seed: int, dups: int) -> None:
    rng = random.Random(seed)
    evs = _many(n)
    delivered = evs + [rng.choice(evs) for _ in range(dups if evs else 0)]
    rng.shuffle(delivered)
    side = MemorySide()
    states, _ = fold_all(delivered, side)
    if not evs:
        return
    state = states["p:u"]
    assert state.conversation.message_count == n
    # Fewer than CHUNK inline; every other digest in exactly one sealed chunk of CHUNK.
    assert len(state.open) < CHUNK * 8
    assert state.sealed == n // CHUNK
    assert all(len(side.chunks[("p:u", k)]) == CHUNK * 8 for k in range(state.sealed))
    assert _conversation(states, side) == {digest(e.event_id) for e in evs}
    assert len(encode_state(state)) < 4 * 1024


def test_long_texts_are_cut_and_flagged_and_still_order_exactly() -> None:
    a, b = LONG_TEXTS
    m1 = msgspec.structs.replace(msg("m1", 10, "inbound"), text=a)
    m1b = msgspec.structs.replace(m1, text=b)
    for order in ([m1, m1b], [m1b, m1]):
        states, records = fold_all(order)
        state = states["p:u"]
        assert records[-1].last_message_text_truncated
        assert len((records[-1].last_message_text or "").encode()) <= TEXT_CAP
        assert shown(states) == reference(order)
        assert len(encode_state(state)) < 2 * TEXT_CAP + 4096
        # The cut texts are equal; the stream kept the digest of the reference's winner,
        # which orders the next tie.
        assert state.text_digest == text_digest(max(a, b, key=text_rank))
    # A long edit of the last message: cut and flagged too; the record stays bounded.
    long_edit = edit("m1", 1, "x" * (3 * TEXT_CAP))
    states, records = fold_all([m1, long_edit])
    assert records[-1].changes == ["edited"] and records[-1].last_message_text_truncated
    assert shown(states) == reference([m1, long_edit])


def test_edits_of_other_messages_wait_in_the_edits_table() -> None:
    side = MemorySide()
    evs = [edit("m2", 1, "two, edited"), msg("m1", 10, "inbound"), msg("m2", 20, "outbound")]
    for i in range(50):
        evs.append(edit("m1", i + 1, f"one, edit {i}"))
    states, _ = fold_all(evs, side)
    # The record keeps only the last message's edit; every mid's winner is in the table.
    state = states["p:u"]
    assert state.conversation.edits == (("m2", (1, evs[0].event_id, "two, edited")),)
    assert side.edits[("p:u", "m1")][2] == "one, edit 49"
    assert shown(states) == reference(evs)
    # m1 becomes the last message again (a later copy): its winning edit comes back.
    later = msg("m1", 30, "inbound")
    states, _ = fold_all([*evs, later], MemorySide())
    assert states["p:u"].conversation.last_message_text == "one, edit 49"
    assert len(encode_state(states["p:u"])) < 1024


def test_the_worst_case_records_stay_under_the_bound() -> None:
    # Every field at its largest and as expensive in JSON as it gets: control characters
    # are escaped as 6 bytes each. Ids longer than their caps are kept as digests (mids)
    # or cut (thread ids).
    worst = "\x01" * (4 * TEXT_CAP)
    long_mid = "\x01" * 100_000
    page, psid = "\x01" * 64, "\x02" * 64
    side = MemorySide()
    evs = [
        Envelope.build(
            kind="message",
            page_id=page,
            psid=psid,
            mid=f"{long_mid}{i}",
            occurred_at=i,
            source="crawler",
            direction="inbound",
            text=worst,
            thread_id=worst,
            raw={},
        )
        for i in range(CHUNK - 1)
    ]
    evs.append(
        Envelope.build(
            kind="edit",
            page_id=page,
            psid=psid,
            mid=f"{long_mid}{CHUNK - 2}",
            occurred_at=9_999,
            source="webhook",
            text=worst.replace("\x01", "\x02"),
            attrs={"num_edit": 1},
            detail="1",
            raw={},
        )
    )
    states, records = fold_all(evs, side)
    (state,) = states.values()
    assert len(state.open) == 8 * (CHUNK - 1) and state.edit is not None
    assert records[-1].last_message_text_truncated and records[-1].changes == ["edited"]
    sizes = {
        "record": len(encode_state(state)),
        "change": max(len(r.to_bytes()) for r in records),
        "edit": max(len(encode_edit(e)) for e in side.edits.values()),
        "edit key": max(len(k[1].encode()) for k in side.edits),
    }
    assert sizes["record"] > 2 * 6 * (TEXT_CAP - 4), sizes  # the test reaches the worst
    assert max(sizes.values()) < RECORD_BOUND, sizes
    assert decode_state(encode_state(state)).state == state


def test_long_ids_match_through_their_digests() -> None:
    long_mid = "m" * 10_000
    message = msgspec.structs.replace(msg("x", 10, "inbound"), mid=long_mid, thread_id="t" * 5000)
    states, _ = fold_all([edit(long_mid, 1, "edited"), message])
    assert shown(states) == reference([message, edit(long_mid, 1, "edited")])
    assert states["p:u"].conversation.last_message_text == "edited"


def test_a_replayed_edit_catches_the_record_up_with_the_table() -> None:
    # The edits table ahead of a record (the edits of an old record carried over before
    # the record was rewritten, and a crash in between): the record lacks the edit of
    # its last message that the table has. The edit event, no longer new to the table,
    # still reaches the record.
    side = MemorySide()
    message = msg("m1", 10, "inbound")
    before = step(None, message, side)
    side.record(before)
    fixed = edit("m1", 1, "fixed")
    side.record(step(before.state, fixed, side))  # the table's write only
    replay = step(before.state, fixed, side)
    assert replay.edit is None  # nothing new for the table
    assert replay.state.conversation.last_message_text == "fixed"
    assert replay.changes == ("edited",)


@settings(max_examples=50, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30))
def test_state_codec_round_trips(evs: list[Envelope]) -> None:
    states, _ = fold_all(evs)
    for state in states.values():
        assert decode_state(encode_state(state)).state == state


def test_replay_from_a_recovered_state_repeats_the_same_records() -> None:
    evs = conversation_events(random.Random(7), pages=1, users=2, messages=1200)
    _, records = fold_all(evs)
    cut = 900
    side = MemorySide()
    states, _ = fold_all(evs[:cut], side)
    assert any(s.sealed for s in states.values()), "the test must cross a sealed chunk"
    recovered = {k: decode_state(encode_state(s)).state for k, s in states.items()}
    replayed: Records = []
    for ev in evs[cut:]:
        key = f"{ev.page_id}:{ev.psid}"
        result: Step = step(recovered.get(key), ev, side)
        side.record(result)
        recovered[key] = result.state
        if result.emitted:
            replayed.append(to_record(result, ev))
    assert replayed == records[len(records) - len(replayed) :]


def _old_format(state: StreamState, seen: object, edits: list[Any]) -> bytes:
    """A record as the code before bounded states wrote it."""
    c = state.conversation
    doc = {
        "page_id": c.page_id, "psid": c.psid, "thread_id": c.thread_id,
        "first_message_at": c.first_message_at, "last_message_at": c.last_message_at,
        "message_count": c.message_count, "last_message_key": c.last_message_key,
        "last_message_mid": c.last_message_mid,
        "last_message_original_text": c.last_message_original_text,
        "last_inbound_at": c.last_inbound_at, "last_outbound_at": c.last_outbound_at,
        "read_watermark": c.read_watermark, "delivered_watermark": c.delivered_watermark,
        "edits": edits, "seq": state.seq, "seen": seen,
    }  # fmt: skip
    return orjson.dumps(doc)


def test_records_of_the_old_formats_are_carried_over() -> None:
    # 600 messages and edits of 40 of them, as the unbounded format held them: every
    # digest in one blob, every edit in the record. Then the same events again, and
    # one message of each kind more.
    evs = _many(600)
    edits = [edit(f"m{i}", 1, f"m{i}, edited") for i in range(0, 600, 15)]
    full = evs + edits
    states, _ = fold_all(full)
    state = states["p:u"]
    blob = b"".join(sorted({digest(e.event_id) for e in evs}))
    old_edits = [[e.mid, [1, e.event_id, e.text]] for e in edits]
    for seen in (base64.b64encode(blob).decode(), [e.event_id[4:] for e in evs + edits]):
        decoded = decode_state(_old_format(state, seen, old_edits))
        side = MemorySide()
        key = "p:u"
        for n, chunk in enumerate(decoded.chunks):
            side.chunks[(key, n)] = chunk
        for mid, e in decoded.edits:
            side.edits[(key, mid)] = e
        carried = decoded.state
        assert to_public(carried) == to_public(state)
        assert carried.sealed == len(decoded.chunks) >= 2
        # Every old message is a duplicate; m585 becomes the last message again with its
        # edit read from the edits table.
        for ev in full:
            assert step(carried, ev, side).duplicate
        later = msg("m585", 5_000, "inbound")
        result = step(carried, later, side)
        assert result.state.conversation.message_count == 600
        assert result.state.conversation.last_message_text == "m585, edited"


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_encode_change_equals_the_model(evs: list[Envelope], rnd: random.Random) -> None:
    shuffled = evs + [rnd.choice(evs) for _ in range(len(evs) // 2)]
    rnd.shuffle(shuffled)
    side = MemorySide()
    states: dict[str, StreamState] = {}
    for ev in shuffled:
        key = f"{ev.page_id}:{ev.psid}"
        result = step(states.get(key), ev, side)
        side.record(result)
        states[key] = result.state
        if result.emitted:
            assert encode_change(result, ev) == to_record(result, ev).to_bytes()
