"""SIGKILL a `convsync streams` worker mid-stream: no change lost, no change renumbered."""

from __future__ import annotations

import os
import random

import pytest

from convsync.kafka import make_producer
from tests.fixtures.kafka import MakeTopics
from tests.streams.conftest import StartWorker, read_changes
from tests.streams.events import conversation_events, produce
from tests.streams.test_app import complete, dedupe
from tests.streams.test_change import fold_all

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]


# The default guarantee; CONVSYNC_STREAMS_GUARANTEE=exactly_once repeats the experiment
# of docs/streams.md with faust's transactions.
GUARANTEE = os.environ.get("CONVSYNC_STREAMS_GUARANTEE", "at_least_once")


@pytest.mark.xfail(
    reason=(
        "known bug, issue 6 left open: after a SIGKILL the restarted faust worker sometimes "
        "stops emitting before the stream is complete (seen in 2 of 5 loaded runs; passes "
        "otherwise). Kept running so a fix shows up as XPASS."
    ),
    strict=False,
)
def test_sigkill_mid_stream_then_restart(
    make_topics: MakeTopics, start_worker: StartWorker
) -> None:
    guarantee = GUARANTEE
    settings = make_topics(partitions=4)
    evs = conversation_events(random.Random(11), pages=4, users=10, messages=6000)
    _, want = fold_all(evs)
    producer = make_producer(settings)
    produce(producer, settings.topic("events"), evs[:4000])

    # Small batches so the kill lands between many batches and commits.
    worker = start_worker(settings, batch_size=50, guarantee=guarantee)
    before = read_changes(settings, until=lambda rs: len(rs) >= 600, timeout=90, worker=worker)
    worker.kill()
    assert len(before) < len(want), "the worker finished before it was killed"

    produce(producer, settings.topic("events"), evs[4000:])
    again = start_worker(settings, batch_size=50, guarantee=guarantee)
    records = read_changes(settings, until=complete(want), timeout=120, worker=again)

    # No change lost, none with a new number: deduped by (key, seq) it is exactly the
    # offline fold; replays after the kill are byte-for-byte copies (dedupe checks).
    got = dedupe(records)
    assert got == {(r.key, r.seq): r for r in want}
    replayed = len(records) - len(got)
    print(f"{guarantee}: {len(got)} changes, {replayed} replayed after SIGKILL")
    # exactly_once does not make the replays disappear: faust commits a partition's
    # transaction from a background task, mid-batch, so it can commit change records of
    # events whose offsets it has not acked yet (docs/streams.md). Dedupe still holds.
