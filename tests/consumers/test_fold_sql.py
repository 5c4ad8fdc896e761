"""The SQL fold equals schemas/fold.py for any order, duplicates and batch boundaries."""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.materializer.rows import Position, stage_row
from consumers.materializer.store import Store
from schemas.envelope import Envelope
from tests.consumers.helpers import (
    conflicting_copy,
    conversations,
    crawler_copy,
    expected,
    expected_rows,
    random_events,
    scalar,
    stored_rows,
)
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

TOPIC = "fold.events"


def _apply(store: Store, events: list[Envelope], cuts: list[int]) -> None:
    """Write ``events`` through the real batch SQL, split into batches at ``cuts``; each
    page has its partition (as the page-keyed topic does)."""
    bounds = sorted({0, len(events), *(c for c in cuts if 0 < c < len(events))})
    offsets: dict[int, int] = {}
    for a, b in itertools.pairwise(bounds):
        rows = []
        touched: dict[int, int] = {}
        for seq, ev in enumerate(events[a:b]):
            part = sum(ev.page_id.encode()) % 3
            offset = offsets.get(part, 0)
            rows.append(stage_row(ev, Position(TOPIC, part, offset), seq))
            offsets[part] = touched[part] = offset + 1
        store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets=touched)


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    dup_share=st.floats(0, 0.6),
    cuts=st.lists(st.integers(0, 100), max_size=6),
    writers=st.integers(1, 3),
)
def test_sql_fold_equals_reference(
    make_schema: MakeSchema, seed: int, n: int, dup_share: float, cuts: list[int], writers: int
) -> None:
    rng = random.Random(seed)
    events = random_events(rng, pages=3, users=3, n=n)
    # Redeliveries, crawler copies that differ from the webhook's (whole seconds, maybe
    # no direction and no text), and conflicting copies of every kind (bad data: another
    # user, text, direction, time, thread id, edit number, source, payload), in any order.
    copies = []
    for e in events:
        if rng.random() >= dup_share:
            continue
        roll = rng.random()
        if roll < 0.3:
            copies.append(e)
        elif roll < 0.6 and e.kind == "message":
            copies.append(crawler_copy(e, bare=rng.random() < 0.5))
        else:
            copies.append(conflicting_copy(rng, e))
    delivered = list(events) + copies
    rng.shuffle(delivered)
    settings = make_schema()
    store = Store(settings.database_url, settings.db_schema, writers=writers)
    try:
        _apply(store, delivered, cuts)
    finally:
        store.close()
    assert conversations(settings) == expected(delivered)
    assert stored_rows(settings) == expected_rows(delivered)


def test_edit_before_message_and_redelivery_keeps_version(make_schema: MakeSchema) -> None:
    settings = make_schema()
    msg = Envelope.build(
        kind="message", page_id="p", psid="u", mid="m1", occurred_at=1_000, source="webhook",
        direction="inbound", text="hello", raw={},
    )  # fmt: skip
    edit = Envelope.build(
        kind="edit", page_id="p", psid="u", mid="m1", occurred_at=2_000, source="webhook",
        text="hello, edited", attrs={"num_edit": 1}, detail="1", raw={},
    )  # fmt: skip
    crawled = msgspec.structs.replace(msg, source="crawler", thread_id="t_1")
    store = Store(settings.database_url, settings.db_schema)
    try:
        _apply(store, [edit], [])
        assert scalar(settings, "SELECT version FROM {s}.conversations") == 1
        _apply(store, [msg], [])
        row = conversations(settings)[("p", "u")]
        assert row["last_message_text"] == "hello, edited"
        assert row["needs_reply"] is True
        assert scalar(settings, "SELECT version FROM {s}.conversations") == 2
        # The same events again: nothing changes, no version bump.
        _apply(store, [msg, edit, msg], [1])
        assert scalar(settings, "SELECT version FROM {s}.conversations") == 2
        # A duplicate that teaches the thread id is a change.
        _apply(store, [crawled], [])
        assert conversations(settings)[("p", "u")]["thread_id"] == "t_1"
        assert scalar(settings, "SELECT version FROM {s}.conversations") == 3
        text = scalar(settings, "SELECT text FROM {s}.messages WHERE mid = 'm1'")
        assert text == "hello, edited"
    finally:
        store.close()


def test_the_webhook_copy_replaces_a_bare_crawled_copy(make_schema: MakeSchema) -> None:
    # The crawler stored a message past Graph's detail window (no sender, no text), in
    # whole seconds; the page's reply came 300 ms after the user's message. The webhook's
    # copy arriving later is the better copy: it replaces the stored row, and the user is
    # waiting for a reply. The old code kept the first copy: no text, needs_reply false.
    settings = make_schema()
    hooked = Envelope.build(
        kind="message", page_id="p", psid="u", mid="m1", occurred_at=1_767_225_656_789,
        source="webhook", direction="inbound", text="hello", raw={"webhook": True},
    )  # fmt: skip
    reply = Envelope.build(
        kind="message", page_id="p", psid="u", mid="m0", occurred_at=1_767_225_656_300,
        source="webhook", direction="outbound", text="how can we help?", raw={},
    )  # fmt: skip
    bare = crawler_copy(hooked, bare=True)
    store = Store(settings.database_url, settings.db_schema)
    try:
        _apply(store, [bare, reply], [])
        row = conversations(settings)[("p", "u")]
        assert (row["needs_reply"], row["last_message_text"]) == (False, "how can we help?")
        _apply(store, [hooked], [])
        row = conversations(settings)[("p", "u")]
        assert row == expected([bare, reply, hooked])[("p", "u")]
        assert (row["needs_reply"], row["last_message_text"]) == (True, "hello")
        assert row["first_message_at"] == 1_767_225_656_000  # every copy is a fact
        assert scalar(settings, "SELECT version FROM {s}.conversations") == 2
        assert row["thread_id"] == "t_p_u"  # the crawler's copy taught it
        kept = stored_rows(settings)[(hooked.event_id, "u")]
        # The row merges both copies: the webhook's time, sender, text and payload, the
        # crawler's thread id.
        assert (kept["occurred_at"], kept["direction"], kept["text"], kept["source"]) == (
            1_767_225_656_789, "inbound", "hello", "webhook",
        )  # fmt: skip
        assert (kept["thread_id"], kept["payload"]) == ("t_p_u", {"webhook": True})
        assert scalar(settings, "SELECT text FROM {s}.messages WHERE mid = 'm1'") == "hello"
        # The worse copy again changes nothing.
        _apply(store, [bare], [])
        assert scalar(settings, "SELECT version FROM {s}.conversations") == 2
        assert stored_rows(settings)[(hooked.event_id, "u")]["text"] == "hello"
    finally:
        store.close()
