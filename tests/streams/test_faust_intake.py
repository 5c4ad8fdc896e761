"""streams/faust_intake.py (F15): the fold's events a fetch at a time.

The intake runs on faust's real consumer (the aiokafka driver's, not started): each test
hands it one fetch as ``_wait_next_records`` returns it and drains ``getmany`` as
faust's drain loop does. End to end, with real Kafka, rebalances and kills, the worker
runs with F15 in test_app.py, test_failures.py and test_kill.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.faust_fixes import FixedApp, without
from streams.faust_intake import Intake

SOURCE = "intake.events"
SOURCE_TP = TP(SOURCE, 0)
OTHER_TP = TP("intake.streams-conversations-changelog", 0)


def _record(tp: TP, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"k",
        value=b"%d" % offset,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1,
        headers=(),
    )


class _Setup:
    def __init__(self, tmp_path: Path, size: int) -> None:
        self.app = FixedApp("intake.streams", store="memory://", datadir=str(tmp_path))
        self.intake = Intake(self.app, SOURCE, size)
        self.app.consumer_hooks = [self.intake.install]
        topic = self.app.topic(SOURCE, key_serializer="raw", value_serializer="raw")
        self.stream = topic.stream()
        assert isinstance(self.stream, faust.Stream)
        self.app.topics._acking_topics.add(SOURCE)  # as the agent's channel registers it
        self.consumer: Any = self.app.consumer
        self.consumer.highwater = lambda tp: 1_000  # faust's getmany reads it per record
        self.consumer.resume_flow()
        self.app.flow_control.resume()
        self.active: set[TP] | None = None

    def fetch(self, records: dict[TP, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """The next ``_wait_next_records`` returns ``records``, then nothing."""
        fetches = [records]

        async def wait_next_records(timeout: float) -> Any:  # noqa: ASYNC109
            return (fetches.pop() if fetches else {}), self.active

        self.consumer._wait_next_records = wait_next_records

    async def drain(self) -> list[tuple[TP, int]]:
        """What faust's drain gets from one ``getmany``: (tp, offset) of each record."""
        return [(tp, message.offset) async for tp, message in self.consumer.getmany(timeout=1.0)]

    def close(self) -> None:
        self.consumer._thread.thread_loop.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[_Setup]:
    made = _Setup(tmp_path, size=10)
    yield made
    made.close()


def _offsets(batch: list[Any]) -> list[int]:
    return [event.message.offset for event in batch]


async def _until(condition: Any, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_a_fetch_goes_to_the_batch_whole_and_other_topics_through_faust(
    setup: _Setup,
) -> None:
    setup.fetch(
        {SOURCE_TP: [_record(SOURCE_TP, i) for i in range(25)], OTHER_TP: [_record(OTHER_TP, 7)]}
    )
    drain = asyncio.ensure_future(setup.drain())
    batches: AsyncIterator[list[Any]] = setup.intake.batches(setup.stream, 0.1)
    unacked = setup.consumer._unacked_messages
    try:
        # The batch fills to its size and the rest of the fetch waits for room.
        await _until(setup.intake.full.is_set)
        await asyncio.sleep(0.02)
        assert len(setup.intake.gathering) == 10 and not drain.done()
        assert not unacked  # tracked when the fold takes them, as faust's stream does
        first = await anext(batches)
        assert _offsets(first) == list(range(10))
        assert {event.message for event in first} == set(unacked)
        assert [event.value for event in first] == [b"%d" % i for i in range(10)]
        second = await anext(batches)  # held: faust tracks unacked messages weakly
        assert _offsets(second) == list(range(10, 20))
        third = await anext(batches)  # closed `within` after its first event
        assert _offsets(third) == list(range(20, 25))
        # faust's drain got the changelog's record only, and the source's read offset.
        assert await drain == [(OTHER_TP, 7)]
        assert setup.consumer._read_offset[SOURCE_TP] == 24
        assert len(unacked) == 25
        for event in third:
            assert await setup.stream.ack(event)
        assert setup.consumer._acked[SOURCE_TP] == list(range(20, 25))
    finally:
        drain.cancel()
        await batches.aclose()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_rebalance_drops_the_gathering_batch_and_stops_the_fetch(setup: _Setup) -> None:
    setup.fetch({SOURCE_TP: [_record(SOURCE_TP, i) for i in range(15)]})
    drain = asyncio.ensure_future(setup.drain())
    await _until(setup.intake.full.is_set)
    # faust's on_partitions_revoked: the flow stops, its queues are cleared.
    setup.consumer.stop_flow()
    setup.app.flow_control.suspend()
    setup.app.flow_control.clear()
    assert await asyncio.wait_for(drain, 5.0) == []
    assert setup.intake.gathering == [] and not setup.consumer._unacked_messages
    # Records 10-14 were never read: the seek that ends the rebalance reads 0-14 again.
    assert setup.consumer._read_offset[SOURCE_TP] == 9


@pytest.mark.asyncio
async def test_read_offsets_gaps_and_paused_partitions_as_faust_s_drain(setup: _Setup) -> None:
    paused = TP(SOURCE, 1)
    setup.active = {SOURCE_TP}
    setup.consumer._read_offset[SOURCE_TP] = 5
    setup.fetch(
        {
            SOURCE_TP: [_record(SOURCE_TP, i) for i in (3, 4, 5, 6, 9)],
            paused: [_record(paused, 0)],  # paused while fetched: read again after the seek
        }
    )
    assert await setup.drain() == []
    assert _offsets(setup.intake.gathering) == [5, 6, 9]
    assert setup.consumer._read_offset[SOURCE_TP] == 9
    assert setup.consumer._read_offset[paused] is None
    gaps = [(gap.begin, gap.end) for gap in setup.consumer._gap[SOURCE_TP]]
    assert gaps == [(7, 10)]  # 7 and 8, as faust's drain adds them


@pytest.mark.asyncio
async def test_off_faust_hands_the_records_on_itself(tmp_path: Path) -> None:
    with without("F15"):
        off = _Setup(tmp_path, size=10)
    try:
        off.fetch({SOURCE_TP: [_record(SOURCE_TP, i) for i in range(3)]})
        assert not off.intake.installed
        assert await off.drain() == [(SOURCE_TP, 0), (SOURCE_TP, 1), (SOURCE_TP, 2)]
        assert off.intake.gathering == []
    finally:
        off.close()


def test_a_batch_holds_at_least_one_event(tmp_path: Path) -> None:
    app = FixedApp("intake.streams", store="memory://", datadir=str(tmp_path))
    with pytest.raises(ValueError, match="at least one event"):
        Intake(app, SOURCE, 0)


@pytest.mark.asyncio
async def test_a_rebalance_during_the_drain_s_commit_stops_the_fetch(setup: _Setup) -> None:
    setup.consumer._commit_every = 2
    setup.consumer._n_acked = 2

    async def commit() -> bool:  # the rebalance begins while faust's drain commits
        setup.consumer.stop_flow()
        setup.app.flow_control.suspend()
        setup.app.flow_control.clear()
        return True

    setup.consumer.commit = commit
    setup.fetch({SOURCE_TP: [_record(SOURCE_TP, i) for i in range(3)]})
    assert await setup.drain() == []
    assert setup.intake.gathering == []
    assert setup.consumer._read_offset[SOURCE_TP] is None


@pytest.mark.asyncio
async def test_a_taken_batch_tells_faust_s_stalled_stream_check(setup: _Setup) -> None:
    setup.fetch({SOURCE_TP: [_record(SOURCE_TP, i) for i in range(3)]})
    assert await setup.drain() == []
    inbound = setup.app.monitor.stream_inbound_time
    assert SOURCE_TP not in inbound  # gathered, not taken yet
    batches: AsyncIterator[list[Any]] = setup.intake.batches(setup.stream, 0.01)
    try:
        before = time.monotonic()
        assert _offsets(await anext(batches)) == [0, 1, 2]
        assert before <= inbound[SOURCE_TP] <= time.monotonic()
    finally:
        await batches.aclose()  # type: ignore[attr-defined]
