"""streams/faust_fixes.py: the check at start (faust_check.py), one regression test per fix.

Each regression test shows the fixed behaviour, then the bad one with the fix switched
off (:func:`streams.faust_fixes.without`). Real faust tables and stores in process; the
consumer fixes F2-F4 run on a stand-in for faust's consumer that records the calls
faust's rebalance makes (the duplicates and losses they cause were seen end to end
after a SIGKILL, test_kill.py, not deterministically). F5 runs against real Kafka in
test_highwaters.py; F13 is for speed only and measured (docs/streams.md); F10 only reads;
F11 (speed only) is shown to take faust's way whenever the hand-on could block.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import faust.stores.memory
import faust.streams
import pytest
from faust.streams import _current_event
from faust.transport import consumer as base_consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from convsync.settings import Settings
from streams import faust_fixes
from streams.faust_fixes import (
    FaustFixError,
    FixedApp,
    bind_event,
    check,
    seek_before_resume,
    without,
)
from streams.folder import Folder
from streams.held import track_partitions
from streams.stats import PageStats

# --- check() -----------------------------------------------------------------------------


def test_check_passes_on_the_pinned_versions() -> None:
    check()
    numbers = [fix.number for fix in faust_fixes.FIXES]
    # F6 retired (replaced by F13, which uses no private name: streams/sender.py).
    assert numbers == [f"F{n}" for n in range(1, 13) if n != 6] + ["F14", "F15"]


async def _getmany_renamed(self: Any, partitions: Any, timeout_s: float) -> Any:
    return {}


def _ensure_consumer_with_an_argument(self: Any, group: str) -> Any:
    return None


class _StoreWithoutMap:
    def __setitem__(self, key: Any, value: Any) -> None: ...


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "fix", "said"),
    [
        (driver.AIOKafkaConsumerThread, "_highwaters", None, "F5", "_highwaters is gone"),
        (driver.Consumer, "_getmany", _getmany_renamed, "F4", "('partitions', 'timeout_s')"),
        (
            driver.AIOKafkaConsumerThread,
            "_ensure_consumer",
            _ensure_consumer_with_an_argument,
            "F5",
            "param",
        ),
        (faust.stores.memory, "Store", _StoreWithoutMap, "F9", "no attribute _key_partition"),
        (faust.streams, "_current_event", weakref.ref, "F1", "not a ContextVar"),
        (base_consumer.Consumer, "perform_seek", None, "F3", "perform_seek is gone"),
    ],
)
def test_check_fails_naming_the_fix_the_versions_and_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, replacement: Any, fix: str, said: str
) -> None:
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(FaustFixError) as caught:
        check()
    message = str(caught.value)
    assert f"{fix} (" in message
    assert said in message
    assert "faust-streaming 0.15" in message and "aiokafka 0." in message
    # Only the fixes that rely on the name are named.
    assert message.count("\n  ") == sum(
        1 for line in message.splitlines() if line.startswith("  F")
    )


def test_the_worker_checks_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import worker

    monkeypatch.delattr(base_consumer.Consumer, "resume_partitions")
    with pytest.raises(FaustFixError, match="F2"):
        worker.run_worker(Settings(kafka_bootstrap="127.0.0.1:1"), worker.StreamConfig())


# --- F1, F7, F8, F9: tables ---------------------------------------------------------------


class _Message:
    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.topic = "fixes.events"


class _Event:
    """What the table hooks read of faust's event: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = _Message(partition)


@pytest.fixture
def last_event() -> Iterator[_Event]:
    """The current event as take_events() leaves it: the batch's last, on partition 1."""
    event = _Event(1)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    yield event
    _current_event.reset(token)


def _app(tmp_path: Path) -> faust.App:
    return faust.App("fixes.streams", store="memory://", datadir=str(tmp_path))


def _folder(tmp_path: Path) -> Folder:
    app = _app(tmp_path)
    return Folder(app, Settings(topic_prefix="fixes", partitions=2), PageStats(app, partitions=2))


def _stats_partitions(stats: PageStats, page_event: _Event) -> list[int]:
    bind_event(page_event)  # type: ignore[arg-type]
    stats.needs_reply["p0"] += 1
    return [partition for partition, _, _ in stats.changelog[stats.needs_reply]]


@pytest.mark.asyncio
async def test_f1_a_page_is_written_to_its_own_partition(
    tmp_path: Path, last_event: _Event
) -> None:
    page_event = _Event(0)
    stats = _folder(tmp_path).stats
    assert _stats_partitions(stats, page_event) == [0]
    stats.changelog[stats.needs_reply].clear()
    _current_event.set(weakref.ref(last_event))  # type: ignore[arg-type]
    with without("F1"):
        assert _stats_partitions(stats, page_event) == [1]  # the other page's partition


def _record_changelog_sends(monkeypatch: pytest.MonkeyPatch, table: Any) -> list[Any]:
    sent: list[Any] = []

    def send_changelog(partition: Any, key: Any, value: Any, **kwargs: Any) -> Any:
        sent.append((partition, key, value))
        return SimpleNamespace(message=SimpleNamespace(partition=1))

    monkeypatch.setattr(table, "send_changelog", send_changelog)
    # faust's own (would start a consumer to read the changelog's partitions).
    monkeypatch.setattr(table, "partition_for_key", lambda key: None)
    return sent


@pytest.mark.asyncio
async def test_f7_stored_states_leave_faust_s_unawaited_changelog_send_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last_event: _Event
) -> None:
    states = _folder(tmp_path).states
    sent = _record_changelog_sends(monkeypatch, states)
    faust_fixes.store_put(states, "p1:u", b"state")
    assert states["p1:u"] == b"state" and sent == []
    with without("F7"):
        faust_fixes.store_put(states, "p1:u", b"state 2")
    # faust's buffered send: neither awaited by the batch nor in its transaction.
    assert [(key, value) for _, key, value in sent] == [("p1:u", b"state 2")]


@pytest.mark.asyncio
async def test_f8_statistics_queue_their_changelog_with_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last_event: _Event
) -> None:
    stats = _folder(tmp_path).stats
    table = stats.messages_in.table
    sent = _record_changelog_sends(monkeypatch, table)
    with _minute():
        stats.messages_in["p0"] += 1
    assert [p for p, _, _ in stats.changelog[table]] == [1] and sent == []
    assert table._partition_timestamps[1]  # the window is set to expire, as faust does

    with without("F8"):
        off = _folder(tmp_path / "off").stats
    off_table = off.messages_in.table
    off_sent = _record_changelog_sends(monkeypatch, off_table)
    with _minute():
        off.messages_in["p0"] += 1
    assert off.changelog[off_table] == []  # nothing for the batch to send and await
    assert len(off_sent) == 1


def _minute() -> Any:
    from streams.stats import _at

    return _at(60)


async def _completed(table: Any, *partitions: int) -> None:
    active = {TP(table.changelog_topic.get_topic_name(), p) for p in partitions}
    await table.on_recovery_completed(active, set())


@pytest.mark.asyncio
async def test_f9_written_keys_of_a_partition_moved_away_are_dropped(
    tmp_path: Path, last_event: _Event
) -> None:
    for number, kept in (("none", {"p0:u"}), ("F9", {"p0:u", "p1:u"})):
        with without(number):
            table = _app(tmp_path / number).Table("t", default=None, partitions=2)
            remember = track_partitions(table)
        for key, partition in (("p0:u", 0), ("p1:u", 1)):
            faust_fixes.store_put(table, key, b"v")
            remember(key, partition)
        await _completed(table, 0)
        assert set(table.data) == kept, number


# --- F2, F3, F4: the consumer -------------------------------------------------------------

STREAM0, STREAM1 = TP("fixes.events", 0), TP("fixes.events", 1)
CHANGELOG = TP("fixes.streams-conversations-changelog", 0)


class _Consumer:
    """faust's consumer as F2-F4 use it; records what reaches it, in order."""

    def __init__(self, committed: dict[TP, int]) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._committed_offset = committed
        self.fetched: list[Any] = []

    def resume_partitions(self, tps: Any) -> None:
        self.calls.append(("resume", set(tps)))

    async def perform_seek(self) -> None:
        self.calls.append(("seek", None))

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.calls.append(("seek_wait", dict(partitions)))

    def assignment(self) -> set[TP]:
        return {STREAM0, STREAM1, CHANGELOG}

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp == CHANGELOG

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
        self.fetched.append(active_partitions)
        return {}


async def _rebalance(numbers: tuple[str, ...] = ()) -> _Consumer:
    consumer = _Consumer({STREAM0: 5})
    with without(*numbers):
        seek_before_resume(consumer)
        # What Recovery.on_recovery_completed does: resume, then seek.
        consumer.resume_partitions({STREAM0, STREAM1, CHANGELOG})
        await consumer.perform_seek()
    return consumer


def _resumed_before_seek(consumer: _Consumer) -> set[TP]:
    seek = consumer.calls.index(("seek", None))
    return set().union(*(tps for name, tps in consumer.calls[:seek] if name == "resume"))


@pytest.mark.asyncio
async def test_f2_stream_partitions_resume_only_after_the_seek() -> None:
    fixed = await _rebalance()
    assert _resumed_before_seek(fixed) == {CHANGELOG}
    assert fixed.calls[-1] == ("resume", {STREAM0, STREAM1})
    # Without: the stream partitions fetch before the seek rewinds them (duplicates).
    assert _resumed_before_seek(await _rebalance(("F2",))) == {STREAM0, STREAM1, CHANGELOG}


@pytest.mark.asyncio
async def test_f3_a_partition_without_a_committed_offset_is_rewound() -> None:
    assert ("seek_wait", {STREAM1: 0}) in (await _rebalance()).calls
    # Without: records fetched and dropped there before the seek are lost.
    assert all(name != "seek_wait" for name, _ in (await _rebalance(("F3",))).calls)


@pytest.mark.asyncio
async def test_f4_the_fetch_never_gets_an_empty_or_live_set() -> None:
    for numbers, empty_fetched in (((), False), (("F4",), True)):
        consumer = _Consumer({})
        with without(*numbers):
            seek_before_resume(consumer)
        live = {STREAM0}
        await consumer._getmany(live, 0.01)
        live.clear()  # the last active partition paused
        await consumer._getmany(live, 0.01)
        # aiokafka reads an empty set as every partition, and faust drops the lot.
        assert (set() in consumer.fetched) is empty_fetched
        assert (consumer.fetched[0] is live) is empty_fetched


# --- F11 ---------------------------------------------------------------------------------


def _handed_on_directly(consumer: Any, message: Any) -> bool:
    """Ask the consumer's wait_first as faust's drain loop does; return True if it gave
    back the callback itself (the direct way), False if faust's ``wait_first``."""
    callback = consumer.callback(message)
    suspend = consumer.suspend_flow.wait()
    waiting = consumer.wait_first(callback, suspend)
    direct = waiting is callback
    for coro in {callback, suspend, waiting}:
        coro.close()
    return direct


@pytest.mark.asyncio
async def test_f11_a_record_is_handed_on_directly_only_when_nothing_can_block(
    tmp_path: Path,
) -> None:
    app = FixedApp("fixes.streams", store="memory://", datadir=str(tmp_path))
    topic = app.topic("fixes.events", key_serializer="raw", value_serializer="raw")
    channel = topic.clone(maxsize=2)
    app.topics.add(channel)
    app.topics._topic_name_index["fixes.events"].add(channel)
    consumer = app.consumer
    try:
        app.flow_control.resume()  # as the started app's flow is
        message = _Message(0)
        assert _handed_on_directly(consumer, message)
        with without("F11"):
            assert not _handed_on_directly(consumer, message)

        # Each thing the callback could wait for sends the record faust's way.
        consumer.suspend_flow.set()  # a rebalance stopped the flow
        assert not _handed_on_directly(consumer, message)
        consumer.suspend_flow.clear()
        app.flow_control.suspend()
        assert not _handed_on_directly(consumer, message)
        app.flow_control.resume()
        channel.queue.put_nowait(1)
        channel.queue.put_nowait(2)
        # A full stream buffer: the callback waits for room, directly (see below).
        assert _handed_on_directly(consumer, message)
        # A rebalance's clear cancels that wait, so nothing of a revoked partition
        # lands after it (faust's wait_first relied on the same cancellation).
        blocked = asyncio.ensure_future(channel.queue.put(3))
        await asyncio.sleep(0)
        assert not blocked.done()
        consumer.stop_flow()
        app.flow_control.suspend()
        app.flow_control.clear()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert channel.queue.empty()
        consumer.resume_flow()
        app.flow_control.resume()
        async with app.topics._tp_to_callback_lock:  # the conductor's index being rebuilt
            assert not _handed_on_directly(consumer, message)
        buffer = app.producer.buffer
        for _ in range(buffer.max_messages + 1):
            buffer.pending.put_nowait(None)  # faust's producer buffer past its mark
        assert not _handed_on_directly(consumer, message)
        while not buffer.pending.empty():
            buffer.pending.get_nowait()
        assert _handed_on_directly(consumer, message)
        # Any other wait_first of the consumer is faust's own.
        other = asyncio.sleep(0)
        suspend = consumer.suspend_flow.wait()
        waiting = consumer.wait_first(other, suspend)
        assert waiting is not other
        for coro in (other, suspend, waiting):
            coro.close()
    finally:
        consumer._thread.thread_loop.close()  # the consumer thread's own loop, never started


# --- F12 ---------------------------------------------------------------------------------


async def _gathering(tmp_path: Path, name: str) -> tuple[Any, faust.Stream[bytes]]:
    """An in-memory channel holding 25 events and a started stream over it."""
    app = faust.App(name, store="memory://", datadir=str(tmp_path))
    channel = app.channel(maxsize=100)
    stream = channel.stream()
    assert isinstance(stream, faust.Stream)
    await stream.maybe_start()
    app.flow_control.resume()  # as the started app's flow is
    for i in range(25):
        await channel.send(value=b"%d" % i)
    return stream.channel, stream  # the stream reads a clone of the channel: its queue


def _close_consumer(stream: faust.Stream[bytes]) -> None:
    """Close the loop of the consumer thread the acks made the app create (never started)."""
    stream.app.consumer._thread.thread_loop.close()


def _values(batch: list[Any]) -> list[int]:
    return [int(event.value) for event in batch]


async def _until(condition: Any, seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_f12_the_next_batch_gathers_while_a_batch_folds(tmp_path: Path) -> None:
    channel, stream = await _gathering(tmp_path, "fixes.f12")
    batches = faust_fixes.take_batches(stream, 10, 0.2)
    try:
        first = await anext(batches)
        assert _values(first) == list(range(10))
        # While the caller holds the first batch, the stream takes the next ten, and no
        # more: the processor waits for room once the gathering batch is full.
        await _until(lambda: channel.queue.qsize() == 25 - 10 - 10)
        await asyncio.sleep(0.05)
        assert channel.queue.qsize() == 5
        assert not any(event.message.acked for event in first)
        second = await anext(batches)  # the first batch's loop body ended: acked
        assert all(event.message.acked for event in first)
        assert _values(second) == list(range(10, 20))
        assert not any(event.message.acked for event in second)
        # The last five close the batch `within` after its first event.
        third = await anext(batches)
        assert _values(third) == list(range(20, 25))
        assert all(event.message.acked for event in second)
    finally:
        await batches.aclose()
        await stream.stop()
        _close_consumer(stream)


@pytest.mark.asyncio
async def test_f12_off_faust_stops_its_intake_while_a_batch_folds(tmp_path: Path) -> None:
    channel, stream = await _gathering(tmp_path, "fixes.no-f12")
    with without("F12"):
        batches = faust_fixes.take_batches(stream, 10, 0.2)
        try:
            first = await anext(batches)
            assert _values(first) == list(range(10))
            # take_events takes no record while the caller holds the batch.
            await asyncio.sleep(0.3)
            assert channel.queue.qsize() == 25 - 10
            assert _values(await anext(batches)) == list(range(10, 20))
        finally:
            await batches.aclose()
            await stream.stop()
            _close_consumer(stream)


# --- F14 ---------------------------------------------------------------------------------


def _kafka_message(key: bytes | None, value: bytes | None) -> faust.types.Message:
    return faust.types.Message(
        topic="fixes.events",
        partition=3,
        offset=17,
        timestamp=0.0,
        timestamp_type=0,
        headers=[("h", b"1")],
        key=key,
        value=value,
        checksum=None,
    )


@pytest.mark.asyncio
async def test_f14_records_decode_to_the_same_events_without_faust_s_codecs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = FixedApp("fixes.streams", store="memory://", datadir=str(tmp_path))
    topic = app.topic(
        "fixes.events",
        schema=faust_fixes.RawSchema(key_serializer="raw", value_serializer="raw"),
    )
    cases = [(b"page-1", b'{"v": 1}'), (None, b"x"), (b"k", None)]

    async def decoded() -> list[tuple[Any, Any, Any]]:
        out = []
        for key, value in cases:
            message = _kafka_message(key, value)
            event = await topic.decode(message, propagate=True)
            assert isinstance(event, faust.Event) and event.app is app
            assert event.message is message
            out.append((event.key, event.value, event.headers))
        return out

    with without("F14"):
        through_faust = await decoded()
    assert await decoded() == through_faust  # the same events ...
    assert [(k, v) for k, v, _ in through_faust] == cases

    def no_codec(*_: Any, **__: Any) -> Any:
        raise AssertionError("a codec lookup")

    # ... without the codec registry, and without reading the Event setting per record.
    monkeypatch.setattr(app.serializers, "loads_key", no_codec)
    monkeypatch.setattr(app.serializers, "loads_value", no_codec)
    monkeypatch.setattr(type(app), "conf", property(no_codec))
    assert await decoded() == through_faust
    with without("F14"), pytest.raises(AssertionError, match="codec"):
        await decoded()


def test_f14_faust_s_monitor_is_left_out_and_rebalances_stay_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def sensors(app: faust.App) -> list[Any]:
        app.on_init_dependencies()  # where faust adds its monitor, as the app starts
        app.consumer._thread.thread_loop.close()  # its consumer's loop, never started
        return list(app.sensors)

    with without("F14"):
        kept = FixedApp("fixes.streams", store="memory://", datadir=str(tmp_path))
        assert kept.monitor in sensors(kept)
    app = FixedApp("fixes.streams", store="memory://", datadir=str(tmp_path))
    left = sensors(app)
    assert app.monitor not in left
    assert [type(s) for s in left] == [faust.Sensor]  # does nothing
    caplog.set_level("WARNING")
    app.on_rebalance_start()
    app.on_rebalance_return()
    app.on_rebalance_end()
    assert "Missing sensor state" not in caplog.text
