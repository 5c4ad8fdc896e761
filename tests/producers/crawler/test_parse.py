"""The fast path of Graph message parsing gives what pydantic validation gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from deploy.simulator.graph_api import Faults, GraphWorld
from producers.crawler.parse import GraphMessage, _fast_message, _Message, _ms, message_envelope
from schemas.crawl import ConversationTodo


def slow(item: Any) -> _Message | None:
    """The reference: pydantic's reading of the item."""
    try:
        msg = GraphMessage.model_validate(item)
    except ValidationError:
        return None
    sender = msg.sender.id if msg.sender is not None else None
    return _Message(msg.id, _ms(msg.created_time), sender, msg.message, msg.attachments)


def graph_time(when: datetime, offset_minutes: int) -> str:
    tz = timezone(timedelta(minutes=offset_minutes))
    local = when.astimezone(tz)
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{hours:02d}{minutes:02d}"


times = st.one_of(
    st.builds(
        graph_time,
        st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        st.integers(min_value=-23 * 60, max_value=23 * 60),
    ),
    st.sampled_from(
        [
            "2026-13-01T00:00:00+0000",
            "2026-02-30T00:00:00+0000",
            "2026-01-01T24:00:00+0000",
            "2026-01-01T00:00:60+0000",
            "2026-01-01T00:00:00+0060",
            "2026-01-01T00:00:00+2400",
            "2026-01-01T00:00:00Z",
            "2026-01-01 00:00:00+0000",
            "not a time",
            "",
        ]
    ),
    st.integers(),
    st.none(),
)
ids = st.one_of(st.text(max_size=5), st.integers(), st.none())
people = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"id": ids},
        optional={
            "name": st.one_of(st.text(), st.integers()),
            # Instagram's participants and senders: a username instead of a name.
            "username": st.one_of(st.text(), st.integers(), st.none()),
        },
    ),
    st.integers(),
)
messages = st.fixed_dictionaries(
    {"id": ids, "created_time": times},
    optional={
        "from": people,
        "to": st.one_of(
            st.none(),
            st.fixed_dictionaries({}, optional={"data": st.lists(people, max_size=2)}),
            st.lists(people, max_size=1),
        ),
        "message": st.one_of(st.none(), st.text(), st.integers()),
        "attachments": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers())),
        "sender": people,
        "sticker": st.text(),
    },
)


@given(messages)
def test_the_fast_path_agrees_with_pydantic(item: dict[str, Any]) -> None:
    fast = _fast_message(item)
    if fast is not None:
        assert fast == slow(item)


def test_the_fake_graph_messages_take_the_fast_path_and_build_the_same_envelopes() -> None:
    world = GraphWorld.generate(
        seed=3, conversations=40, max_messages=30, malformed=3, faults=Faults(details_limit=20)
    )
    page = world.page_ids[0]
    fast = 0
    for conv in world.conversations[page]:
        todo = ConversationTodo(thread_id=conv.thread_id, psid=conv.psid or "u", updated_at=0)
        for item in (world.message_json(conv, i) for i in range(len(conv.messages))):
            reference = slow(item)
            got = _fast_message(item)
            if got is not None:
                fast += 1
                assert got == reference
            env = message_envelope(item, page_id=page, todo=todo)
            if reference is None:
                assert env == "invalid_message"
            else:
                assert not isinstance(env, str)
                assert (env.mid, env.occurred_at, env.text) == (
                    reference.mid,
                    reference.created_ms,
                    reference.text or None,
                )
    assert fast > 100
