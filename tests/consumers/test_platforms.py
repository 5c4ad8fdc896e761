"""Instagram next to Messenger in the projection: platform columns, unsent messages,
guests' links to the PSIDs Meta reveals (migration 0012), written by the real batch SQL.

The envelopes are what the webhook mapping makes of the corpus's bodies (written from
Meta's webhook reference), so these tests follow a real delivery into Postgres.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from consumers.materializer.rows import Position, stage_row
from consumers.materializer.store import Store
from convsync.db import connect
from convsync.errors import PoisonError
from convsync.settings import Settings
from producers.webhook.admit import Accepted, admit
from producers.webhook.deliveries import map_delivery
from producers.webhook.mapping import ItemDefectError, map_body, map_item
from producers.webhook.payload import parse_body
from schemas.envelope import Envelope
from schemas.migrate import apply_migrations, load_migrations
from tests.corpus.golden import HERE, MAX_RECORD_BYTES, SECRET
from tests.fixtures.postgres import MakeSchema

TOPIC = "platforms.events"
ACCOUNT = "17841405822304914"
PAGE = "104837261951234"


def corpus(name: str) -> list[Envelope]:
    """The envelopes of one corpus body."""
    return map_body(parse_body((HERE / "webhooks" / f"{name}.json").read_bytes()))


def write(settings: Settings, batches: Sequence[Sequence[Envelope]]) -> None:
    """Write ``batches`` one after the other on partition 0, as the materializer would."""
    store = Store(settings.database_url, settings.db_schema)
    offset = 0
    try:
        for batch in batches:
            rows = []
            for ev in batch:
                rows.append(stage_row(ev, Position(TOPIC, 0, offset), offset))
                offset += 1
            store.write_batch(group="g", topic=TOPIC, rows=rows, next_offsets={0: offset})
    finally:
        store.close()


def rows(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    """The rows of ``query`` run in the projection's schema."""
    with connect(settings) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db_schema)))
        return list(conn.execute(query).fetchall())


def test_platform_is_stored_on_events_and_conversations(make_schema: MakeSchema) -> None:
    settings = make_schema()
    events = corpus("instagram_message_text") + corpus("messenger_message_text")
    assert [e.platform for e in events] == ["instagram", "messenger"]
    write(settings, [events])
    assert rows(settings, "SELECT page_id, platform FROM events ORDER BY page_id") == [
        (PAGE, "messenger"),
        (ACCOUNT, "instagram"),
    ]
    assert rows(settings, "SELECT page_id, platform FROM conversations ORDER BY page_id") == [
        (PAGE, "messenger"),
        (ACCOUNT, "instagram"),
    ]


def test_an_instagram_conversation_is_instagram_whatever_the_order_of_its_copies(
    make_schema: MakeSchema,
) -> None:
    # A copy without a platform (a crawler's, before the crawler knows Instagram) and the
    # webhook's: the conversation is Instagram's in both orders.
    (webhook,) = corpus("instagram_message_text")
    bare = Envelope.build(
        kind="message",
        page_id=ACCOUNT,
        psid=webhook.psid,
        mid="m_other",
        occurred_at=webhook.occurred_at - 1000,
        source="crawler",
        raw={},
    )
    for order in ([bare, webhook], [webhook, bare]):
        settings = make_schema()
        write(settings, [[order[0]], [order[1]]])
        assert rows(settings, "SELECT platform FROM conversations") == [("instagram",)]


@pytest.mark.parametrize("together", [False, True])
def test_an_unsent_message_is_marked_deleted_not_dropped_in_any_order(
    make_schema: MakeSchema, together: bool
) -> None:
    (message,) = corpus("instagram_reply_to_message")
    (unsend,) = corpus("instagram_message_deleted")
    assert (unsend.kind, unsend.mid) == ("unsend", message.mid)
    for order in itertools.permutations([message, unsend]):
        settings = make_schema()
        write(settings, [order] if together else [[e] for e in order])
        found = rows(settings, "SELECT event_id, text, deleted_at, platform FROM messages")
        assert len(found) == 1
        event_id, text, deleted_at, platform = found[0]
        assert (event_id, text, platform) == (message.event_id, message.text, "instagram")
        assert deleted_at is not None
        assert int(deleted_at.timestamp() * 1000) == unsend.occurred_at
        # The unsend is an event of the log like any other.
        assert rows(settings, "SELECT count(*) FROM events WHERE kind = 'unsend'") == [(1,)]


def test_a_message_never_unsent_has_no_deletion(make_schema: MakeSchema) -> None:
    settings = make_schema()
    (unsend,) = corpus("instagram_message_deleted")
    write(settings, [[*corpus("instagram_message_text"), unsend]])
    assert rows(settings, "SELECT deleted_at FROM messages") == [(None,)]


def _item(sender: dict[str, Any], body_key: str, body: dict[str, Any], ts: int) -> Envelope:
    item = {"sender": sender, "recipient": {"id": PAGE}, "timestamp": ts, body_key: body}
    return map_item(PAGE, None, orjson.loads(orjson.dumps(item)), "messaging")


def test_a_guest_is_its_own_conversation_and_its_psid_link_is_recorded(
    make_schema: MakeSchema,
) -> None:
    ref = "c1f4e8a2-7b9d-4e1a-9c3f-2d8b6a5e4f10"
    guest = _item({"user_ref": ref}, "message", {"mid": "m_g1", "text": "hi"}, 1_000)
    other = _item({"user_ref": "another"}, "message", {"mid": "m_g2", "text": "yo"}, 1_500)
    # Later Meta names the guest by a PSID too: the link.
    both = _item({"id": "6354927318804471", "user_ref": ref}, "postback", {"payload": "P"}, 2_000)
    again = _item({"id": "6354927318804471", "user_ref": ref}, "postback", {"payload": "Q"}, 3_000)
    assert (guest.kind, guest.psid) == ("message", f"user_ref:{ref}")
    assert other.psid == "user_ref:another"
    assert (both.psid, both.attrs["user_ref"]) == ("6354927318804471", ref)
    results = []
    for order in ([guest, other, both, again], [again, both, other, guest]):
        settings = make_schema()
        write(settings, [[e] for e in order])
        convs = rows(settings, "SELECT psid, message_count FROM conversations ORDER BY psid")
        assert convs == [
            ("6354927318804471", 0),
            ("user_ref:another", 1),
            (f"user_ref:{ref}", 1),
        ]
        links = rows(
            settings,
            "SELECT page_id, user_ref, psid, event_id, first_seen_at FROM user_refs",
        )
        assert [link[:4] for link in links] == [(PAGE, ref, "6354927318804471", both.event_id)]
        results.append(links)
    assert results[0] == results[1]


def test_rows_stored_before_0012_are_messengers_and_the_check_holds(
    make_schema: MakeSchema,
) -> None:
    settings = make_schema(migrate=False)
    (ig_event,) = corpus("instagram_message_text")
    with connect(settings) as conn:
        apply_migrations(conn, schema=settings.db_schema, up_to=11)
    with connect(settings) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db_schema)))
        # Rows as the materializer wrote them before 0012 (no platform column).
        conn.execute(
            "INSERT INTO events (event_id, page_id, psid, kind, mid, occurred_at, source,"
            " payload, topic, \"partition\", \"offset\") VALUES ('ev1_old', %s, 'u',"
            " 'message', 'm_old', now(), 'webhook', '{}', 't', 0, 0)",
            (PAGE,),
        )
        conn.execute("INSERT INTO conversations (page_id, psid) VALUES (%s, %s)", (PAGE, "u"))
        applied = apply_migrations(conn, schema=settings.db_schema, up_to=12)
        assert applied == ["0012_platform_guests_unsend.sql"]
        # Run again after a crash midway: every statement is safe to repeat.
        (mig,) = [m for m in load_migrations() if m.version == 12]
        for statement in mig.statements():
            conn.execute(statement)
        assert conn.execute("SELECT platform FROM events").fetchall() == [("messenger",)]
        assert conn.execute("SELECT platform FROM conversations").fetchall() == [("messenger",)]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE conversations SET platform = 'whatsapp'")
    write(settings, [[ig_event]])
    assert ("instagram",) in rows(settings, "SELECT platform FROM events")


def test_an_item_defect_is_dead_lettered_with_its_reason_not_a_conversation() -> None:
    # The mapper keeps an item whose sender is the account itself as unknown with the
    # defect; the materializer refuses it as poison (the DLQ gets it with the reason).
    raw = (HERE / "webhooks" / "instagram_sender_is_account.json").read_bytes()
    with pytest.raises(ItemDefectError):
        map_body(parse_body(raw))
    decision = admit(
        SECRET,
        raw,
        "sha256=" + hmac.new(SECRET, raw, "sha256").hexdigest(),
        max_record_bytes=MAX_RECORD_BYTES,
    )
    assert isinstance(decision, Accepted)
    ((_, delivery),) = decision.records
    ((_, value),) = map_delivery(delivery).records
    kept = Envelope.from_bytes(value)
    assert kept.kind == "unknown"
    assert kept.psid != ACCOUNT
    with pytest.raises(PoisonError, match="item defect: the sender is the page itself"):
        stage_row(kept, Position(TOPIC, 0, 0), 0)


_PAGES = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan=st.lists(
        st.tuples(
            st.sampled_from(["message", "unsend", "link"]),
            st.integers(0, 3),  # which message (or which guest)
            st.integers(0, 50),  # when
        ),
        max_size=14,
    ),
    order_seed=st.randoms(use_true_random=False),
    cut=st.integers(1, 5),
)
def test_any_order_and_batching_gives_the_same_deletions_and_links(
    make_schema: MakeSchema, plan: list[tuple[str, int, int]], order_seed: Any, cut: int
) -> None:
    # One schema for every example of this run (a page of its own per example).
    if _SCHEMA.get(id(make_schema)) is None:
        _SCHEMA.clear()
        _SCHEMA[id(make_schema)] = make_schema()
    settings = _SCHEMA[id(make_schema)]
    account = f"178414{next(_PAGES):011d}"
    events: list[Envelope] = []
    for kind, n, at in plan:
        t = T0 + at
        if kind == "link":
            sender = {"id": f"9{n}", "user_ref": f"ref-{n % 2}"}
            item = {"sender": sender, "recipient": {"id": account}, "timestamp": t}
            events.append(
                map_item(
                    account,
                    None,
                    {**item, "postback": {"payload": f"P{at}"}},
                    "messaging",
                    "instagram",
                )
            )
            continue
        body: dict[str, Any] = {"mid": f"aWdf{n}"}
        body |= {"is_deleted": True} if kind == "unsend" else {"text": f"t{n}"}
        item = {"sender": {"id": "1093847562019384"}, "recipient": {"id": account}, "timestamp": t}
        events.append(map_item(account, None, {**item, "message": body}, "messaging", "instagram"))
    shuffled = list(events)
    order_seed.shuffle(shuffled)
    write(settings, [shuffled[i : i + cut] for i in range(0, len(shuffled), cut)])
    # The reference: an unsend is one event per mid, its copies merged to the greatest
    # time (schemas.copies), and a message is deleted at it; links are the set of pairs.
    merged_unsend: dict[str, int] = {}
    for e in events:
        if e.kind == "unsend" and e.mid is not None:
            merged_unsend[e.mid] = max(merged_unsend.get(e.mid, 0), e.occurred_at)
    stored = {
        str(mid): (None if d is None else int(d.timestamp() * 1000))
        for mid, d in rows(
            settings, f"SELECT mid, deleted_at FROM messages WHERE page_id = '{account}'"
        )
    }
    expected = {str(e.mid): merged_unsend.get(str(e.mid)) for e in events if e.kind == "message"}
    assert stored == expected
    links = {
        (str(r), str(p))
        for r, p in rows(
            settings, f"SELECT user_ref, psid FROM user_refs WHERE page_id = '{account}'"
        )
    }
    assert links == {(e.attrs["user_ref"], e.psid) for e in events if e.kind == "postback"}


_SCHEMA: dict[int, Settings] = {}
T0 = 1_764_840_000_000
