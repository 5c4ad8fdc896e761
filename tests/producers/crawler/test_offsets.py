"""Crawl-record bookkeeping: commit offsets, marks in commit metadata, duplicate decisions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from producers.crawler._offsets import MAX_METADATA, Mark, PartitionBook, decide


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
