"""Copies of one event merge into one row per conversation, whatever their order."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.copies import (
    TEXT_CAP,
    EventRow,
    copy_digest,
    cut_text,
    merged_rows,
    text_digest,
    text_rank,
)
from schemas.envelope import Envelope
from schemas.fold import project
from tests.schemas.test_fold import LONG_TEXTS, PAGE, events


def _rows(evs: list[Envelope]) -> dict[tuple[str, str], dict[str, object]]:
    return {k: r.fields() for k, r in merged_rows(evs).items()}


@settings(max_examples=300, deadline=None)
@given(
    evs=st.lists(events(), max_size=40),
    seed=st.integers(0, 2**32),
    dup=st.lists(st.integers(0, 39), max_size=10),
)
def test_any_order_any_duplicates_same_rows(evs: list[Envelope], seed: int, dup: list[int]) -> None:
    shuffled = list(evs) + [evs[i] for i in dup if i < len(evs)]
    random.Random(seed).shuffle(shuffled)
    assert _rows(shuffled) == _rows(evs)


@settings(max_examples=200, deadline=None)
@given(evs=st.lists(events(), max_size=40), seed=st.integers(0, 2**32))
def test_merging_merged_rows_is_merging_the_copies(evs: list[Envelope], seed: int) -> None:
    # A stored row merged with the rest of the copies (what the materializer does batch
    # after batch) is the merge of all of them.
    rng = random.Random(seed)
    cut = rng.randrange(len(evs) + 1)
    first = merged_rows(evs[:cut])
    for ev in evs[cut:]:
        key = (ev.event_id, ev.psid)
        row = first.get(key)
        first[key] = (
            EventRow(row.merged, row.copy, row.digest).add(ev) if row else (merged_rows([ev])[key])
        )
    assert {k: r.fields() for k, r in first.items()} == _rows(evs)


@settings(max_examples=300, deadline=None)
@given(evs=st.lists(events(), max_size=40))
def test_the_last_message_text_is_what_the_rows_give(evs: list[Envelope]) -> None:
    # The materializer reads the last message's text from its merged row and the
    # winning edit row; the reference fold reads it from the copies.
    rows = merged_rows(evs)
    for (page, psid), state in project(evs).items():
        mine = [r.fields() for r in rows.values() if r.copy.psid == psid and r.copy.page_id == page]
        messages = [r for r in mine if r["kind"] == "message"]
        assert state.message_count == len(messages)
        if not messages:
            assert state.last_message_text is None
            continue
        last = max(messages, key=lambda r: (r["occurred_at"], r["event_id"]))
        assert (last["occurred_at"], last["event_id"]) == state.last_message_key
        edits = [r for r in mine if r["kind"] == "edit" and r["mid"] and r["mid"] == last["mid"]]
        if edits:
            win = max(edits, key=lambda r: (r["num_edit"], r["event_id"]))
            assert state.last_message_text == win["text"]
        else:
            assert state.last_message_text == last["text"]


def _copy(**changes: object) -> Envelope:
    base = Envelope.build(
        kind="message", page_id=PAGE, psid="u", mid="m1", occurred_at=1_000_000,
        source="crawler", thread_id="t_1", raw={"graph": True},
    )  # fmt: skip
    return msgspec.structs.replace(base, **changes)


def test_the_webhook_copy_and_the_crawled_copy_merge() -> None:
    crawled = _copy()  # whole seconds, thread id, no sender, no text
    hooked = _copy(
        occurred_at=1_000_789, source="webhook", thread_id=None, direction="inbound",
        text="hello", raw={"webhook": True},
    )  # fmt: skip
    for order in ([crawled, hooked], [hooked, crawled, crawled]):
        (row,) = merged_rows(order).values()
        f = row.fields()
        assert (f["occurred_at"], f["text"], f["direction"], f["thread_id"]) == (
            1_000_789, "hello", "inbound", "t_1",
        )  # fmt: skip
        assert (f["source"], f["payload"]) == ("webhook", {"webhook": True})


def test_a_text_follows_its_copy_time_and_other_fields_are_known_over_none() -> None:
    # Bad data: the later copy has no text. The row's text is the later copy's (what
    # the conversation's last message shows), its direction the one that is known.
    early = _copy(text="early", direction="outbound")
    late = _copy(occurred_at=1_000_500)
    (row,) = merged_rows([early, late]).values()
    assert (row.merged.text, row.merged.direction) == (None, "outbound")
    assert project([late, early])[(PAGE, "u")].last_message_text is None


def test_the_rest_of_a_row_is_the_greatest_copy() -> None:
    a, b = _copy(attrs={"n": 1}), _copy(attrs={"n": 2})
    want = max((a, b), key=copy_digest)
    for order in ([a, b], [b, a]):
        (row,) = merged_rows(order).values()
        assert row.copy.attrs == want.attrs
        assert row.digest == copy_digest(want)


def test_edits_of_one_id_with_different_texts_or_numbers() -> None:
    def edit(text: str, num: object) -> Envelope:
        return Envelope.build(
            kind="edit", page_id=PAGE, psid="u", mid="m1", occurred_at=5, source="webhook",
            text=text, attrs={"num_edit": num}, detail="1", raw={},
        )  # fmt: skip

    message = _copy(occurred_at=1, text="orig", source="webhook")
    # One id (the detail is "1"), different texts: the greater text wins the row and
    # the fold, in any order (the first one used to stay).
    x, y = edit("x", 1), edit("y", 1)
    for order in ([message, x, y], [message, y, x]):
        assert project(order)[(PAGE, "u")].last_message_text == "y"
    # Different edit numbers: the text of the highest number.
    hi, lo = edit("hi", 3), edit("zz", 2)
    for order in ([message, hi, lo], [lo, message, hi]):
        ((_, row),) = [(k, r) for k, r in merged_rows(order).items() if r.copy.kind == "edit"]
        assert (row.merged.num_edit, row.merged.text) == (3, "hi")
        assert project(order)[(PAGE, "u")].last_message_text == "hi"


def test_text_rank_is_code_point_order_up_to_the_cap() -> None:
    assert text_rank(None) < text_rank("") < text_rank("a") < text_rank("b") < text_rank("ba")
    a, b = LONG_TEXTS
    assert cut_text(a) == cut_text(b) and len(cut_text(a).encode()) <= TEXT_CAP
    # Past the cap, the digest orders them; a kept cut text with its digest ranks the same.
    assert (text_rank(a) < text_rank(b)) == (text_digest(a) < text_digest(b))
    assert text_rank(cut_text(a), text_digest(a)) == text_rank(a)
    # A text that is exactly a long text's cut ranks below it, as code points say.
    assert text_rank(cut_text(a)) < text_rank(a)


def test_cut_text_never_splits_a_character() -> None:
    text = "a" + "😀" * TEXT_CAP
    cut = cut_text(text)
    assert text.startswith(cut) and len(cut.encode()) <= TEXT_CAP
    assert len(cut.encode()) > TEXT_CAP - 4


@settings(max_examples=300, deadline=None)
@given(ev=events())
def test_a_copy_digest_is_the_hash_of_its_published_record_read_back(ev: Envelope) -> None:
    # Digests are stored with the rows: computing them from the Struct's fields must give
    # what the canonical JSON of the record as published gives.
    import hashlib

    import orjson

    from schemas.event_id import canonical_json

    record = orjson.loads(ev.to_bytes())
    assert copy_digest(ev) == hashlib.sha256(canonical_json(record)).hexdigest()[:32]
    assert copy_digest(Envelope.from_bytes(ev.to_bytes())) == copy_digest(ev)
