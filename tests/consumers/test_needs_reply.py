"""The example downstream consumer prints each conversation needing a reply once."""

from __future__ import annotations

import io
import random

import orjson
import pytest

from consumers.needs_reply import Deduper, run
from convsync.kafka import make_producer
from schemas.conversation import ConversationChange
from tests.fixtures.kafka import MakeTopics
from tests.streams.events import conversation_events
from tests.streams.test_change import fold_all


@pytest.mark.integration
def test_prints_each_needs_reply_change_once(make_topics: MakeTopics) -> None:
    settings = make_topics(partitions=3)
    _, records = fold_all(conversation_events(random.Random(9), pages=2, users=4, messages=80))
    rng = random.Random(1)
    # A worker restarted after SIGKILL repeats changes it had published, same seq.
    replays = [r for r in records[:40] if rng.random() < 0.3]
    producer = make_producer(settings)
    topic = settings.topic("conversations")
    for r in records[:40] + replays + records[40:]:
        producer.produce(topic, key=r.key.encode(), value=r.to_bytes())
    producer.produce(topic, key=b"p0:u0", value=b"{not json")
    assert producer.flush(30) == 0

    out = io.StringIO()
    counts = run(settings, group=f"{settings.topic_prefix}.nr", out=out, idle_exit=3.0)
    printed = [orjson.loads(x) for x in out.getvalue().splitlines()]
    want = [r for r in records if "needs_reply" in r.changes]
    assert sorted((p["key"], p["seq"]) for p in printed) == sorted((r.key, r.seq) for r in want)
    assert all(p["waiting_since"] is not None for p in printed)
    assert counts.duplicates >= 1 and counts.poison == 1
    assert counts.records == len(records) + len(replays) + 1

    # Offsets were committed: the same group prints nothing again.
    again = io.StringIO()
    assert run(settings, group=f"{settings.topic_prefix}.nr", out=again, idle_exit=2.0).records == 0
    assert again.getvalue() == ""


def change(key: str, seq: int) -> ConversationChange:
    return ConversationChange.model_construct(key=key, seq=seq)


@pytest.mark.parametrize("max_keys", [1, 3, 50])
def test_the_deduper_keeps_at_most_max_keys(max_keys: int) -> None:
    dedupe = Deduper(max_keys=max_keys)
    for i in range(1000):
        assert dedupe.accept(change(f"p:u{i}", 1))
        assert not dedupe.accept(change(f"p:u{i}", 1)), "a copy right after its original"
        assert len(dedupe.last) <= max_keys


def test_the_deduper_forgets_the_least_recently_seen_key() -> None:
    dedupe = Deduper(max_keys=2)
    assert dedupe.accept(change("a", 5))
    assert dedupe.accept(change("b", 1))
    assert not dedupe.accept(change("a", 4))  # seen again: now the most recent
    assert dedupe.accept(change("c", 1))  # "b" is forgotten, not "a"
    assert not dedupe.accept(change("a", 5))
    assert list(dedupe.last) == ["c", "a"]
    assert dedupe.accept(change("b", 1))  # forgotten: accepted again (at-least-once)
