"""Scenario 13: one giant conversation through the change stream, every record bounded.

One conversation with 1,000,000 messages and 10,000 edits of 2,000 characters (plus
re-deliveries and crawler copies of its messages), and 100 small conversations of the
same page (so the same partition) interleaved, produced straight into the events topic;
`convsync streams` folds them as a real process. Before bounded states, this
conversation's record passed Kafka's 1 MB limit near 100,000 messages (or 600 long
edits), the changelog write was refused, and the worker crash-looped on that batch: the
change stream stopped for every page of the partition.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from confluent_kafka import TopicPartition

from admin.status import watermarks
from convsync.kafka import admin_client, make_consumer, make_producer
from convsync.settings import Settings
from schemas.copies import cut_text
from schemas.envelope import Envelope
from schemas.fold import ConversationState, apply, project
from streams.app import app_id
from streams.change import RECORD_BOUND
from tests.fault.harness import Pipeline, write_result
from tests.fixtures.kafka import MakeTopics
from tests.streams.events import T0

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGE = "9100000000000001"
GIANT = "9200000000000001"
MESSAGES = 1_000_000
EDITS = 10_000  # one every MESSAGES // EDITS messages, the last one's included
EDIT_CHARS = 2_000
DUPLICATES = 50_000  # re-deliveries of earlier messages, a fifth as crawler copies
SMALL = 100  # other conversations of the page
SMALL_MESSAGES = 30


def _message(i: int, psid: str = GIANT) -> Envelope:
    return Envelope.build(
        kind="message", page_id=PAGE, psid=psid, mid=f"m_{psid}_{i}", occurred_at=T0 + i,
        source="webhook", direction="inbound" if i % 3 else "outbound", text=f"t{i}",
        raw={"i": i},
    )  # fmt: skip


def _crawled(i: int) -> Envelope:
    m = _message(i)
    return msgspec.structs.replace(
        m, **{"occurred_at": m.occurred_at - m.occurred_at % 1000, "source": "crawler",
                "direction": None, "thread_id": "t_giant", "raw": {"graph": i}}
    )  # fmt: skip


def _edit(i: int) -> Envelope:
    text = (f"edit of {i} " * (EDIT_CHARS // 8 + 1))[:EDIT_CHARS]
    return Envelope.build(
        kind="edit", page_id=PAGE, psid=GIANT, mid=f"m_{GIANT}_{i}", occurred_at=T0 + i + 1,
        source="webhook", text=text, attrs={"num_edit": 1}, detail="1", raw={"e": i},
    )  # fmt: skip


def stream(rng: random.Random) -> Iterator[tuple[Envelope, bool]]:
    """Yield (event, is a copy already sent) in the order they are produced."""
    every = MESSAGES // EDITS
    small_every = MESSAGES // (SMALL * SMALL_MESSAGES)
    dup_every = MESSAGES // DUPLICATES
    small_sent = 0
    for i in range(MESSAGES):
        yield _message(i), False
        if i % every == every - 1:
            yield _edit(i), False
        if i % dup_every == dup_every - 1:
            j = rng.randrange(i + 1)  # far back too: in sealed chunks
            yield (_crawled(j) if rng.random() < 0.2 else _message(j)), True
        if i % small_every == 0 and small_sent < SMALL * SMALL_MESSAGES:
            n = small_sent
            small_sent += 1
            yield (
                msgspec.structs.replace(
                    _message(n // SMALL, psid=f"93{n % SMALL:014d}"), occurred_at=T0 + i
                ),
                False,
            )


def produce_all(settings: Settings) -> tuple[ConversationState, list[Envelope], int]:
    """Produce the stream; return the reference state of the giant conversation, the
    small conversations' events and the number of records."""
    producer = make_producer(settings, **{"linger.ms": 50, "batch.num.messages": 10000})
    topic = settings.topic("events")
    giant = ConversationState(page_id=PAGE, psid=GIANT)
    small: list[Envelope] = []
    n = 0
    for event, again in stream(random.Random(13)):
        if event.psid == GIANT:
            giant = apply(giant, event, again=again)
        else:
            small.append(event)
        while True:
            try:
                producer.produce(topic, event.to_bytes(), key=PAGE.encode())
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return giant, small, n


def shown(state: ConversationState) -> dict[str, Any]:
    """The reference state as a change record shows it (texts cut to TEXT_CAP bytes)."""
    out = dict(state.public())
    text = out["last_message_text"]
    out["last_message_text"] = None if text is None else cut_text(text)
    return out


class Sink:
    """The change records as read back: per key, the set of sequence numbers, the last
    record, and whether any (key, seq) came twice with different content."""

    def __init__(self) -> None:
        self.seqs: dict[str, bytearray] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.first_seen: dict[str, dict[int, bytes]] = {}
        self.conflicts = 0
        self.records = 0
        self.largest = 0
        self.small_times: list[int] = []
        self.giant_first_time = 0
        self.giant_last_time = 0

    def add(self, value: bytes, timestamp: int) -> None:
        self.records += 1
        self.largest = max(self.largest, len(value))
        doc = orjson.loads(value)
        key, seq = doc["key"], int(doc["seq"])
        seen = self.seqs.setdefault(key, bytearray())
        if len(seen) <= seq:
            seen.extend(b"\0" * (seq + 1 - len(seen)))
        if seen[seq] and key != f"{PAGE}:{GIANT}" and self.first_seen[key][seq] != value:
            self.conflicts += 1
        seen[seq] = 1
        if key != f"{PAGE}:{GIANT}":
            self.first_seen.setdefault(key, {})[seq] = value
            self.small_times.append(timestamp)
        else:
            self.giant_first_time = min(self.giant_first_time or timestamp, timestamp)
            self.giant_last_time = max(self.giant_last_time, timestamp)
        if seq >= int(self.last.get(key, {}).get("seq", 0)):
            self.last[key] = doc

    def gaps(self) -> int:
        """(key, seq) numbers below a key's greatest that never came."""
        return sum(seen[1:].count(0) for seen in self.seqs.values())


def read_sink(
    settings: Settings, sink: Sink, want: dict[str, Any], pipe: Pipeline, *, timeout: float
) -> None:
    """Read the change records until the giant conversation's last record shows ``want``
    (or ``timeout``, or the worker died), then what else is there."""
    topic = settings.topic("conversations")
    consumer = make_consumer(settings, f"giant-reader-{time.monotonic_ns()}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    deadline = time.monotonic() + timeout
    key = f"{PAGE}:{GIANT}"

    def done() -> bool:
        last = sink.last.get(key, {})
        return all(last.get(f) == v for f, v in want.items())

    try:
        while not done() and time.monotonic() < deadline and not pipe.dead():
            for msg in consumer.consume(5000, timeout=1.0):
                assert msg.error() is None, msg.error()
                sink.add(msg.value() or b"", msg.timestamp()[1])
        idle = 0
        while idle < 3:
            batch = consumer.consume(5000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for msg in batch:
                sink.add(msg.value() or b"", msg.timestamp()[1])
    finally:
        consumer.close()


def changelog_sizes(settings: Settings) -> dict[str, tuple[int, int]]:
    """Return each of the app's changelog topics: (records, largest value in bytes)."""
    prefix = app_id(settings)
    names = [
        t for t in admin_client(settings).list_topics(timeout=10).topics
        if t.startswith(prefix) and t.endswith("-changelog")
    ]  # fmt: skip
    out: dict[str, tuple[int, int]] = {}
    for name in sorted(names):
        marks = watermarks(settings, [name]).get(name, {})
        consumer = make_consumer(settings, f"giant-changelog-{time.monotonic_ns()}")
        consumer.assign([TopicPartition(name, p, lo) for p, (lo, _) in marks.items()])
        left = {p for p, (lo, hi) in marks.items() if hi > lo}
        n = largest = 0
        try:
            deadline = time.monotonic() + 120
            while left and time.monotonic() < deadline:
                for msg in consumer.consume(5000, timeout=1.0):
                    if msg.error() is not None:
                        continue
                    n += 1
                    largest = max(largest, len(msg.value() or b""))
                    if msg.offset() + 1 >= marks[msg.partition()][1]:
                        left.discard(msg.partition())
        finally:
            consumer.close()
        assert not left, f"{name}: partitions {left} not read to the end"
        out[name.removeprefix(prefix + "-")] = (n, largest)
    return out


def test_giant_conversation(make_topics: MakeTopics, scenario_logs: Path) -> None:
    began = time.monotonic()
    settings = make_topics(partitions=2)
    giant, small, produced = produce_all(settings)
    produce_seconds = time.monotonic() - began
    assert giant.message_count == MESSAGES
    sink = Sink()
    with Pipeline(settings, scenario_logs) as pipe:
        started = time.monotonic()
        pipe.start("streams")
        read_sink(settings, sink, shown(giant), pipe, timeout=1500)
        fold_seconds = time.monotonic() - started
        alive = not pipe.dead()
        rss = pipe.rss().get("streams", 0)
        sizes = changelog_sizes(settings)
    key = f"{PAGE}:{GIANT}"
    got = sink.last.get(key, {})
    got_count = int(got.get("message_count", 0))
    want_small = {f"{p}:{u}": shown(s) for (p, u), s in project(small).items()}
    small_mismatches = sum(
        1 for k, want in want_small.items()
        if {f: sink.last.get(k, {}).get(f) for f in want} != want
    )  # fmt: skip
    # Change records of the other conversations kept coming while the giant one was
    # folded: spread over its whole span, with no long silence.
    times = sorted(sink.small_times)
    span = max(1, sink.giant_last_time - sink.giant_first_time)
    before_end = sum(1 for t in times if t < sink.giant_last_time)
    first_half = sum(1 for t in times if t < sink.giant_first_time + span // 2)
    gap = max((b - a for a, b in pairwise(times)), default=0)
    largest_changelog = max(largest for _, largest in sizes.values())
    write_result(
        13,
        "Giant conversation",
        done=(
            f"One conversation with {MESSAGES:,} messages, {EDITS:,} edits of {EDIT_CHARS:,} "
            f"characters and {DUPLICATES:,} re-deliveries (a fifth as crawler copies), and "
            f"{SMALL} small conversations of the same page (same partition) interleaved, "
            "produced straight into the events topic; `convsync streams` folds them as a "
            "process. Every changelog topic is read back for its largest record; the "
            "change records are read back and compared with the reference fold."
        ),
        scale=f"{produced:,} events, 2 partitions, one worker",
        figures={
            "events produced": produced,
            "produce seconds": round(produce_seconds, 1),
            "fold seconds (worker start to the last message's record)": round(fold_seconds, 1),
            "giant conversation messages: reference / stream": f"{MESSAGES:,} / {got_count:,}",
            "lost (missing)": max(0, MESSAGES - got_count),
            "duplicates": max(0, got_count - MESSAGES),
            "change records read": sink.records,
            "sequence gaps / conflicting copies": f"{sink.gaps()} / {sink.conflicts}",
            "small conversations equal to the reference": (
                f"{len(want_small) - small_mismatches} of {len(want_small)}"
            ),
            "small conversations' records in the first half of the giant's span / before its end": (
                f"{first_half} / {before_end} of {len(times)}"
            ),
            "giant's span / longest gap between small conversations' records (s)": (
                f"{span / 1000:.1f} / {gap / 1000:.1f}"
            ),
            "largest change record (bytes)": sink.largest,
            "changelog topics: records, largest value (bytes)": {
                name: f"{n:,}, {largest:,}" for name, (n, largest) in sizes.items()
            },
            "record bound (bytes)": RECORD_BOUND,
            "worker RSS at the end (MB)": round(rss / 1024, 1),
            "worker alive at the end": alive,
        },
        seconds=time.monotonic() - began,
    )
    assert alive, "the worker exited"
    assert got_count == MESSAGES, f"{got_count} messages folded of {MESSAGES}"
    assert {f: got.get(f) for f in shown(giant)} == shown(giant)
    assert sink.gaps() == 0 and sink.conflicts == 0
    assert small_mismatches == 0
    assert first_half > len(times) // 4 and before_end > len(times) // 2, (
        "the other conversations of the partition waited for the giant one"
    )
    assert largest_changelog < RECORD_BOUND and sink.largest < RECORD_BOUND, sizes
