"""The publisher's confirmation deadline and its failure modes, with Kafka unreachable.

The producer is real; nothing listens on its bootstrap port, so no record is ever
confirmed and every wait ends by the publisher's own deadline (the gateway's 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from convsync.errors import RetryableError
from convsync.settings import Settings
from deploy.ports import free_ports
from producers.webhook.publisher import Publisher

pytestmark = [pytest.mark.asyncio]


def unreachable() -> Publisher:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_ports()}")
    return Publisher(settings, "nowhere.events", confirm_timeout=0.4)


async def test_each_publish_fails_at_its_own_deadline_in_order() -> None:
    publisher = unreachable()
    publisher.start()
    try:
        started = time.monotonic()
        ended: dict[int, float] = {}

        async def one(i: int) -> str:
            await asyncio.sleep(0.1 * i)  # deadlines 0.4, 0.5, 0.6 s after the start
            try:
                await publisher.publish([(b"1", b"v%d" % i)])
            except RetryableError as e:
                ended[i] = time.monotonic() - started
                return str(e)
            return "confirmed"

        # A bound of its own: a deadline that never fires must fail the test, not hang it.
        reasons = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(3))), 5)
        assert reasons == ["Kafka did not confirm within 0.4s"] * 3
        # Each waited its full timeout (give or take the pump's tick), not less, and
        # the queue was served in order.
        for i in range(3):
            assert 0.4 + 0.1 * i - 0.01 <= ended[i] < 0.4 + 0.1 * i + 0.5, ended
        assert ended[0] <= ended[1] <= ended[2]
        assert not publisher._waiting  # every expired batch left the queue
    finally:
        await publisher.close(flush_timeout=0.1)


async def test_a_stopped_pump_fails_waiting_requests_at_once_and_refuses_new_ones() -> None:
    publisher = unreachable()
    publisher.confirm_timeout = 30.0
    publisher.start()
    try:
        waiting = asyncio.ensure_future(publisher.publish([(b"1", b"v")]))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        pump = publisher._pump_task
        assert pump is not None
        started = time.monotonic()
        pump.cancel()
        with pytest.raises(RetryableError, match="pump stopped"):
            await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 1.0  # not after the 30 s timeout
        producer = publisher._producer
        assert producer is not None
        queued = len(producer)  # the first record, still unconfirmed
        with pytest.raises(RetryableError, match="pump is not running"):
            await publisher.publish([(b"1", b"w")])
        assert len(producer) == queued  # refused before anything was produced
    finally:
        await publisher.close(flush_timeout=0.1)


class _CountingPolls:
    """The real producer, counting the pump's polls."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.polls = 0

    def poll(self, timeout: float) -> int:
        self.polls += 1
        served: int = self.producer.poll(timeout)
        return served

    def __len__(self) -> int:
        return len(self.producer)


async def test_the_pump_looks_again_at_once_only_after_a_poll_that_served_deliveries() -> None:
    publisher = unreachable()
    publisher.tick = 0.02
    assert publisher.pause_after(0) == 0.02
    assert publisher.pause_after(1) == publisher.pause_after(250) == 0.0
    # Records in flight that Kafka never confirms: every poll serves nothing, so the pump
    # waits a tick between polls instead of spinning on the loop.
    publisher.start()
    try:
        assert publisher._producer is not None
        counting = _CountingPolls(publisher._producer)
        pump = publisher._pump_task
        assert pump is not None
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        pump = asyncio.get_running_loop().create_task(publisher._pump(counting))  # type: ignore[arg-type]
        publisher._pump_task = pump
        with pytest.raises(RetryableError):
            await publisher.publish([(b"1", b"v")])  # fails after confirm_timeout (0.4 s)
        # ~20 ticks, plus a poll after each served error event (connection refused);
        # a pump that spun would poll thousands of times.
        assert 5 <= counting.polls <= 100, counting.polls
    finally:
        await publisher.close(flush_timeout=0.1)


async def test_close_drops_what_kafka_never_confirmed() -> None:
    # Those records' requests were already answered 503; a producer left holding them
    # kept reconnecting to the dead broker until the process exited.
    publisher = unreachable()
    publisher.start()
    producer = publisher._producer
    assert producer is not None
    with pytest.raises(RetryableError):
        await publisher.publish([(b"1", b"v"), (b"2", b"w")])
    assert len(producer) == 2
    assert await publisher.close(flush_timeout=0.1) == 2
    assert len(producer) == 0
    assert publisher._producer is None
