"""Crawl-record bookkeeping: commit offsets, marks in commit metadata, duplicate decisions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from producers.crawler._offsets import (
    MAX_METADATA,
    Mark,
    PartitionBook,
    Seen,
    decide,
    resume_marks,
)


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
