"""`convsync streams` end to end on the real broker: change records, stats, metrics, restart."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from convsync.kafka import make_producer
from schemas.conversation import ConversationChange
from schemas.envelope import Envelope
from schemas.fold import project
from streams.change import MemorySide, StreamState, step
from tests.fixtures.kafka import MakeTopics
from tests.streams.conftest import StartWorker, Worker, read_changes
from tests.streams.events import conversation_events, produce
from tests.streams.test_change import fold_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dedupe(records: list[ConversationChange]) -> dict[tuple[str, int], ConversationChange]:
    """What a consumer deduping by (key, seq) keeps; replays must be identical copies."""
    out: dict[tuple[str, int], ConversationChange] = {}
    for r in records:
        seen = out.setdefault((r.key, r.seq), r)
        assert seen == r, f"two different records for {(r.key, r.seq)}"
    return out


def complete(expected: list[ConversationChange]) -> Callable[[list[ConversationChange]], bool]:
    want = {(r.key, r.seq) for r in expected}
    return lambda records: want <= {(r.key, r.seq) for r in records}


def expected_stats(evs: list[Envelope]) -> dict[str, dict[float, dict[str, object]]]:
    """Per page and minute: messages in/out and the response-time samples."""
    states: dict[str, StreamState] = {}
    side = MemorySide()
    out: dict[str, dict[float, dict[str, object]]] = {}
    counted: set[str] = set()
    for ev in evs:
        key = f"{ev.page_id}:{ev.psid}"
        result = step(states.get(key), ev, side)
        side.record(result)
        states[key] = result.state
        minute = float(ev.occurred_at // 60_000 * 60)
        row = out.setdefault(ev.page_id, {}).setdefault(
            minute, {"messages_in": 0, "messages_out": 0, "samples": []}
        )
        first_copy = ev.kind == "message" and ev.event_id not in counted
        counted.add(ev.event_id)
        if first_copy and ev.direction is not None:
            # A message counts once, in its first copy's direction; without one, neither.
            name = "messages_in" if ev.direction == "inbound" else "messages_out"
            row[name] = int(row[name]) + 1  # type: ignore[call-overload]
        if "replied" in result.changes and result.previous.last_inbound_at is not None:
            row["samples"].append(ev.occurred_at - result.previous.last_inbound_at)  # type: ignore[attr-defined]
    return out


def assert_stats(stats: dict[str, Any], evs: list[Envelope]) -> None:
    """Assert that a worker's /stats/ document has exactly the figures of ``evs``."""
    want_stats = expected_stats(evs)
    final = project(evs)
    assert set(stats["pages"]) == set(want_stats)
    for page, minutes in want_stats.items():
        windows = {w["start"]: w for w in stats["pages"][page]["windows"]}
        for minute, row in minutes.items():
            w = windows.get(minute, {"messages_in": 0, "messages_out": 0, "replies": 0})
            assert (w["messages_in"], w["messages_out"]) == (
                row["messages_in"],
                row["messages_out"],
            )
            samples = row["samples"]
            assert w["replies"] == len(samples)  # type: ignore[arg-type]
            if samples:
                assert w["median_response_ms"] == statistics.median(samples)  # type: ignore[arg-type]
        waiting = sum(1 for (p, _), s in final.items() if p == page and s.needs_reply)
        assert stats["pages"][page]["needs_reply"] == waiting


def stats_match(worker: Worker, evs: list[Envelope], *, timeout: float = 10.0) -> None:
    """Assert that /stats/ reaches the figures of ``evs`` (its last batch lands just after
    its change records, which the caller has read; a worker just started may not serve
    yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_stats(orjson.loads(worker.get("/stats/")), evs)
            return
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_change_stream_stats_and_restart(
    make_topics: MakeTopics, start_worker: StartWorker
) -> None:
    settings = make_topics(partitions=4)
    evs = conversation_events(random.Random(3), pages=3, users=6, messages=300)
    first, second = evs[:200], evs[200:]
    producer = make_producer(settings)
    produce(producer, settings.topic("events"), first)
    worker = start_worker(settings)

    # Every change of the first part, exactly as the reference computes it offline.
    _, want = fold_all(first)
    got = dedupe(read_changes(settings, until=complete(want), timeout=90, worker=worker))
    assert got == {(r.key, r.seq): r for r in want}

    stats_match(worker, first)

    want_stats = expected_stats(first)
    final = project(first)
    metrics = worker.get("/metrics").decode()
    page = sorted(want_stats)[0]
    waiting = sum(1 for (p, _), s in final.items() if p == page and s.needs_reply)
    line = f'convsync_streams_page_conversations_needing_reply{{page="{page}"}} {waiting:.1f}'
    assert line in metrics.splitlines()
    assert "convsync_streams_page_messages_per_minute{" in metrics
    assert "convsync_streams_page_response_median_seconds{" in metrics

    # A clean restart recovers the tables from their changelogs: the second part
    # continues every conversation's numbering, and nothing is emitted twice.
    worker.stop()
    assert worker.proc.returncode == 0, worker.tail()
    produce(producer, settings.topic("events"), second)
    again = start_worker(settings)
    _, want_all = fold_all(evs)
    records = read_changes(settings, until=complete(want_all), timeout=90, worker=again)
    assert len(records) == len(want_all), "a clean restart re-emitted changes"
    assert dedupe(records) == {(r.key, r.seq): r for r in want_all}
    # The statistics of the first part came back from their changelogs (the second part
    # adds to the same minutes), so the figures are those of all events.
    stats_match(again, evs)


def _pages(worker: Worker, path: str = "/stats/") -> set[str]:
    return set(orjson.loads(worker.get(path))["pages"])


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_second_worker_takes_pages_and_the_first_stops_showing_them(
    make_topics: MakeTopics, start_worker: StartWorker, guarantee: str
) -> None:
    settings = make_topics(partitions=4)
    # Eight pages over four partitions (two on each with the producer's partitioner), so
    # any split of the partitions between two workers gives each of them pages.
    evs = conversation_events(random.Random(11), pages=8, users=4, messages=240)
    pages = set(expected_stats(evs))
    assert len(pages) == 8
    produce(make_producer(settings), settings.topic("events"), evs)
    first = start_worker(settings, guarantee=guarantee)
    _, want = fold_all(evs)
    read_changes(settings, until=complete(want), timeout=90, worker=first)
    stats_match(first, evs)

    # The second worker joins: the group rebalances and the partitions are split.
    second = start_worker(settings, guarantee=guarantee)
    deadline = time.monotonic() + 90
    while True:
        try:
            mine, theirs = _pages(first), _pages(second)
        except OSError:  # the second worker's web server is not up yet
            mine, theirs = pages, set()
        if theirs and mine | theirs == pages and not mine & theirs:
            break
        assert second.proc.poll() is None, second.tail()
        # Before streams/held.py the first worker went on showing every page, frozen.
        assert time.monotonic() < deadline, (
            f"first shows {sorted(mine)}, second {sorted(theirs)}\n"
            f"first:\n{first.tail()}\nsecond:\n{second.tail()}"
        )
        time.sleep(0.5)
    # Each shows the whole figures of its own pages: the new owner recovered them from
    # the changelogs, the old one kept those it still holds.
    for worker, held in ((first, mine), (second, theirs)):
        assert_stats(orjson.loads(worker.get("/stats/")), [e for e in evs if e.page_id in held])
    # Prometheus: the pages handed over are gone from the first worker's series.
    metrics = first.get("/metrics").decode()
    for page in theirs:
        assert f'page="{page}"' not in metrics
    assert any(f'page="{page}"' in metrics for page in mine)
