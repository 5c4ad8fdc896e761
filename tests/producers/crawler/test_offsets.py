"""Crawl-record bookkeeping: commit offsets, marks in commit metadata, duplicate decisions."""

from __future__ import annotations

import random
import uuid

import orjson
import pytest
from confluent_kafka import KafkaException, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from convsync.kafka import make_consumer
from producers.crawler._offsets import (
    MAX_METADATA,
    Mark,
    PartitionBook,
    Seen,
    decide,
    resume_marks,
)
from tests.fixtures.kafka import MakeTopics


def test_commit_offset_is_the_lowest_in_flight() -> None:
    book = PartitionBook()
    assert book.commit_offset() is None
    for o in (5, 6, 7):
        book.begin(o)
    book.finish(6)
    assert book.commit_offset() == 5
    book.finish(5)
    assert book.commit_offset() == 7
    book.finish(7)
    assert book.commit_offset() == 8


@given(st.permutations(list(range(20))))
def test_commit_offset_never_passes_an_unfinished_record(order: list[int]) -> None:
    book = PartitionBook()
    for o in range(20):
        book.begin(o)
    finished: set[int] = set()
    for o in order:
        book.finish(o)
        finished.add(o)
        committed = book.commit_offset()
        assert committed is not None
        assert all(x in finished for x in range(committed))


def test_marks_round_trip_and_metadata_stays_small() -> None:
    book = PartitionBook(marks={"p1": Mark("a" * 12, 3, False), "p2": Mark("b" * 12, 9, True)})
    assert PartitionBook.parse_marks(book.metadata()) == book.marks
    assert PartitionBook.parse_marks("garbage") == {}
    big = PartitionBook(marks={f"page{i}": Mark(f"{i:012x}", i, True) for i in range(300)})
    big.marks["running"] = Mark("c" * 12, 1, False)
    text = big.metadata()
    assert len(text) <= MAX_METADATA
    assert PartitionBook.parse_marks(text)["running"] == Mark("c" * 12, 1, False)


def _running(n: int, rng: random.Random) -> tuple[PartitionBook, list[Seen]]:
    """A partition with ``n`` pages, each with a running crawl whose steps were read in
    rounds (the log interleaves pages): every step but the newest handled, the newest in
    flight. Returns the live book and the log as Seen records."""
    lengths = {f"10485760{i:07d}": rng.randrange(1, 6) for i in range(n)}
    book = PartitionBook()
    log: list[Seen] = []
    for seq in range(max(lengths.values()) + 1):
        for page, newest in lengths.items():
            if seq <= newest:
                log.append(Seen(len(log), page, f"{int(page):012x}", seq))
    for rec in log:
        book.begin(rec.offset)
        if rec.seq < lengths[rec.page_id]:
            book.finish(rec.offset)
            book.marks[rec.page_id] = Mark(rec.crawl_id, rec.seq, False)
    return book, log


def test_metadata_fits_however_many_crawls_run_finished_marks_first() -> None:
    # ~95 marks fit in Kafka's 4 KB. Until 2026-12-02 the marks of running crawls were
    # never dropped: a partition with more running crawls had every commit refused.
    book, _ = _running(300, random.Random(1))
    for i in range(50):
        book.marks[f"done{i}"] = Mark(f"{i:012x}", 7, True)
    text = book.metadata()
    assert len(text) <= MAX_METADATA
    kept = PartitionBook.parse_marks(text)
    assert 80 < len(kept) < 300
    assert all(book.marks[p] == m for p, m in kept.items())
    assert not any(m.finished for m in kept.values())  # finished ones went first
    small = PartitionBook(marks=dict(list(book.marks.items())[:40]))
    assert PartitionBook.parse_marks(small.metadata()) == small.marks  # all fit: all kept


@given(st.integers(1, 400), st.integers(0, 2**32))
def test_running_marks_left_out_are_proven_by_the_log(n: int, seed: int) -> None:
    # A new owner reads from the committed offset and raises the committed marks with
    # the records above it (resume_marks): it gets every running crawl's mark back, so
    # no handled step runs again, whichever marks the metadata had to leave out.
    book, log = _running(n, random.Random(seed))
    offset = book.commit_offset()
    assert offset is not None
    committed = PartitionBook.parse_marks(book.metadata())
    resumed = resume_marks(committed, [rec for rec in log if rec.offset >= offset])
    assert resumed == book.marks
    for rec in log[offset:]:
        handled = rec.seq <= book.marks[rec.page_id].seq
        d = decide(resumed.get(rec.page_id), crawl_id=rec.crawl_id, seq=rec.seq)
        assert (d == "duplicate") == handled


@pytest.mark.integration
def test_the_broker_takes_the_metadata_of_a_partition_with_many_crawls(
    make_topics: MakeTopics,
) -> None:
    settings = make_topics(partitions=1)
    book, _ = _running(300, random.Random(2))
    too_long = orjson.dumps(
        {p: [m.crawl_id, m.seq, int(m.finished)] for p, m in book.marks.items()}
    ).decode()  # what the old code committed
    consumer = make_consumer(settings, f"g-{uuid.uuid4().hex[:8]}")
    topic = settings.topic("crawl")
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        with pytest.raises(KafkaException, match="OFFSET_METADATA_TOO_LARGE"):
            consumer.commit(offsets=[TopicPartition(topic, 0, 1, too_long)], asynchronous=False)
        consumer.commit(offsets=[TopicPartition(topic, 0, 1, book.metadata())], asynchronous=False)
        (got,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert got.offset == 1
        assert PartitionBook.parse_marks(got.metadata).items() <= book.marks.items()
    finally:
        consumer.close()


def test_decisions() -> None:
    running = Mark("x" * 12, 4, False)
    finished = Mark("x" * 12, 9, True)
    assert decide(None, crawl_id="y" * 12, seq=0) == "start"
    assert decide(None, crawl_id="y" * 12, seq=3) == "continue"
    assert decide(running, crawl_id="x" * 12, seq=5) == "continue"
    assert decide(running, crawl_id="x" * 12, seq=4) == "duplicate"
    assert decide(running, crawl_id="x" * 12, seq=0) == "duplicate"
    assert decide(running, crawl_id="y" * 12, seq=0) == "join"
    assert decide(running, crawl_id="y" * 12, seq=2) == "stale"
    assert decide(finished, crawl_id="x" * 12, seq=10) == "duplicate"
    assert decide(finished, crawl_id="y" * 12, seq=0) == "start"


@given(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=40))
def test_a_chain_with_any_redeliveries_runs_each_step_once(seqs: list[int]) -> None:
    """Whatever copies of a crawl's records arrive, each seq is handled at most once."""
    mark: Mark | None = None
    handled: list[int] = []
    for seq in sorted(seqs):  # a partition delivers in order; copies sit next to each other
        d = decide(mark, crawl_id="x" * 12, seq=seq)
        if d in ("start", "continue"):
            handled.append(seq)
            mark = Mark("x" * 12, seq, False)
    assert handled == sorted(set(seqs))


def _step(mark: Mark | None, rec: tuple[str, int], lengths: dict[str, int]) -> Mark:
    """Return the page's mark after a step of ``rec`` (the caller decided to run it)."""
    crawl, seq = rec
    return Mark(crawl, seq, seq + 1 >= lengths[crawl])


@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=15), max_size=4),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=30),
)
def test_resuming_from_the_log_refetches_at_most_one_step(
    lengths_list: list[int], arrivals: list[int], kill_at: int, commit_pick: int
) -> None:
    """Whatever commit landed last, a new owner that raises the marks with the records
    above it (resume_marks) runs every needed step once and at most one step again."""
    crawls = [f"{i:012x}" for i in range(len(lengths_list))]
    lengths = dict(zip(crawls, lengths_list, strict=True))
    # crawl 0 is asked for first; the others (as many as have an arrival) later
    pending = sorted([(0, crawls[0]), *zip(arrivals, crawls[1:], strict=False)])
    log: list[tuple[str, int]] = []
    mark: Mark | None = None
    marks_before: list[Mark | None] = []  # the mark after records [0, i) were handled
    fetched: list[tuple[str, int]] = []
    last_final = -1  # index of the last step that ended its crawl
    must_commit = 0  # the worker awaited that step's commit before its next fetch
    i = 0
    while True:
        while pending and pending[0][0] <= i:
            log.append((pending.pop(0)[1], 0))
        if i >= len(log) or i == kill_at:
            break
        marks_before.append(mark)
        d = decide(mark, crawl_id=log[i][0], seq=log[i][1])
        if d in ("start", "continue"):
            must_commit = last_final + 1
            fetched.append(log[i])
            mark = _step(mark, log[i], lengths)
            if mark.finished:
                last_final = i
            else:
                log.append((log[i][0], log[i][1] + 1))
        i += 1
    killed = i < len(log)
    if killed and decide(mark, crawl_id=log[i][0], seq=log[i][1]) in ("start", "continue"):
        must_commit = last_final + 1
        fetched_in_flight = [log[i]]
    else:
        fetched_in_flight = []
    marks_before.append(mark)
    # the last commit that landed: at least the one the worker waited for
    c = must_commit + commit_pick % (i - must_commit + 1)
    committed = marks_before[c]
    seen = [Seen(o, "p", crawl, seq) for o, (crawl, seq) in enumerate(log) if o >= c]
    resumed = resume_marks({} if committed is None else {"p": committed}, seen).get("p")
    # the new owner replays from c; requests still to come arrive at the end
    log.extend((crawl, 0) for _, crawl in pending)
    after: list[tuple[str, int]] = []
    j = c
    while j < len(log):
        d = decide(resumed, crawl_id=log[j][0], seq=log[j][1])
        if d in ("start", "continue"):
            after.append(log[j])
            resumed = _step(resumed, log[j], lengths)
            if not resumed.finished:
                log.append((log[j][0], log[j][1] + 1))
        j += 1
    assert len(after) == len(set(after)), "a step ran twice after the resume: a fork"
    again = set(after) & set(fetched + fetched_in_flight)
    assert len(again) <= 1, (again, log, c)
    ran = set(fetched) | set(after)
    started = {crawl for crawl, seq in ran if seq == 0}
    assert ran == {(crawl, s) for crawl in started for s in range(lengths[crawl])}
    assert crawls[0] in started
