"""convsync/aproducer.py: a batch ends once every record of it was acknowledged.

The counting is tested with a stand-in for confluent-kafka's ``Producer`` that reports
deliveries when the test says so (any time, even before the batch is fully produced) or
when it is polled; the real producer against the real broker is exercised by the
crawler's and the streams worker's tests (tests/streams/test_sender.py).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError

from convsync.aproducer import AsyncProducer
from convsync.errors import RetryableError


class _Producer:
    """Records produced records; ``deliver_at_once`` reports each inside ``produce``."""

    def __init__(self, *, deliver_at_once: bool = False, full_every: int = 0) -> None:
        self.pending: list[Any] = []
        self.produced = 0
        self.deliver_at_once = deliver_at_once
        self.full_every = full_every  # raise BufferError on every n-th call
        self.calls = 0
        # poll(0) delivers what is pending; the threads it was called on; errors to raise.
        self.deliver_on_poll = False
        self.polled_on: set[int] = set()
        self.poll_errors: list[Exception] = []
        self.polls = 0

    def poll(self, timeout: float) -> int:
        self.polls += 1
        self.polled_on.add(threading.get_ident())
        if self.poll_errors:
            raise self.poll_errors.pop()
        if self.deliver_on_poll:
            n = len(self.pending)
            self.deliver(n)
            return n
        return 0

    def __len__(self) -> int:
        return len(self.pending)

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("queue full")
        self.produced += 1
        if self.deliver_at_once:
            kwargs["on_delivery"](None, None)
        else:
            self.pending.append(kwargs["on_delivery"])

    def deliver(self, n: int, err: KafkaError | None = None) -> None:
        for callback in self.pending[:n]:
            callback(err, None)
        del self.pending[:n]


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(b"k%d" % i, b"v%d" % i) for i in range(n)]


@pytest.mark.asyncio
async def test_a_batch_ends_only_when_its_last_record_is_acknowledged() -> None:
    fake = _Producer()
    producer = AsyncProducer(fake)  # type: ignore[arg-type]
    sending = asyncio.ensure_future(producer.send_batch("t", _records(5)))
    await asyncio.sleep(0)
    assert fake.produced == 5
    fake.deliver(4)
    await asyncio.sleep(0.01)
    assert not sending.done()
    fake.deliver(1)
    assert await asyncio.wait_for(sending, 1) == 5


@pytest.mark.asyncio
async def test_acks_that_come_before_the_batch_is_produced_are_counted() -> None:
    # Every ack arrives while the batch is still being produced (the poll thread is
    # faster than the loop), and some produce calls find librdkafka's queue full.
    fake = _Producer(deliver_at_once=True, full_every=3)
    producer = AsyncProducer(fake)  # type: ignore[arg-type]
    assert await asyncio.wait_for(producer.send_batch("t", _records(7)), 1) == 7
    assert fake.produced == 7


@pytest.mark.asyncio
async def test_a_record_not_delivered_fails_the_batch() -> None:
    fake = _Producer()
    producer = AsyncProducer(fake)  # type: ignore[arg-type]
    sending = asyncio.ensure_future(producer.send_batch("t", _records(3)))
    await asyncio.sleep(0)
    fake.deliver(1)
    fake.deliver(1, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    fake.deliver(1)
    with pytest.raises(RetryableError, match="1 records to t not delivered"):
        await asyncio.wait_for(sending, 1)


@pytest.mark.asyncio
async def test_an_empty_batch_ends_at_once() -> None:
    producer = AsyncProducer(_Producer())  # type: ignore[arg-type]
    assert await asyncio.wait_for(producer.send_batch("t", []), 1) == 0


@pytest.mark.asyncio
async def test_reports_are_served_on_the_loops_thread_while_a_batch_waits() -> None:
    fake = _Producer()
    fake.deliver_on_poll = True
    producer = AsyncProducer(fake)  # type: ignore[arg-type]
    producer.start()  # no thread of its own
    assert not any(t.name == producer.name for t in threading.enumerate())
    assert await asyncio.wait_for(producer.send_batch("t", _records(4)), 1) == 4
    assert fake.polled_on == {threading.get_ident()}
    # Once no batch waits, the polling task ends.
    await asyncio.sleep(0.01)
    assert producer._pump is not None and producer._pump.done()
    polls = fake.polls
    await asyncio.sleep(0.01)
    assert fake.polls == polls


@pytest.mark.asyncio
async def test_a_failed_poll_does_not_stop_the_reports() -> None:
    fake = _Producer()
    fake.deliver_on_poll = True
    fake.poll_errors = [RuntimeError("a callback failed")]
    producer = AsyncProducer(fake)  # type: ignore[arg-type]
    assert await asyncio.wait_for(producer.send_batch("t", _records(2)), 1) == 2


@pytest.mark.asyncio
async def test_close_serves_the_reports_left() -> None:
    fake = _Producer()
    producer = AsyncProducer(fake)  # type: ignore[arg-type]
    sending = asyncio.ensure_future(producer.send_batch("t", _records(3)))
    await asyncio.sleep(0)
    fake.deliver_on_poll = True
    await asyncio.wait_for(producer.close(1), 1)
    assert len(fake) == 0
    assert await asyncio.wait_for(sending, 1) == 3


@pytest.mark.asyncio
async def test_with_a_poll_thread_reports_are_served_on_it() -> None:
    fake = _Producer()
    fake.deliver_on_poll = True
    producer = AsyncProducer(fake, poll_thread=True)  # type: ignore[arg-type]
    producer.start()
    try:
        assert await asyncio.wait_for(producer.send_batch("t", _records(3)), 2) == 3
    finally:
        producer._stop.set()
    assert threading.get_ident() not in fake.polled_on
