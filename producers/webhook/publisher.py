"""A durable confluent-kafka producer bridged to asyncio: await until Kafka confirms."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from convsync.errors import RetryableError
from convsync.kafka import producer_config
from convsync.settings import Settings

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes]
"""A Kafka record to publish: ``(key, value)``."""

Headers = list[tuple[str, str | bytes | None]]
Extra = tuple[str, bytes | None, bytes, Headers]
"""A record for another topic, confirmed with the request's: ``(topic, key, value,
headers)`` (the relay's copy of a body)."""


class _Batch:
    """The records of one request; resolves its future when all are confirmed or one fails.

    Delivery callbacks run inside ``producer.poll`` on the event loop's thread.
    """

    __slots__ = ("future", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if self.future.done():
            return
        if err is not None:
            self.future.set_exception(RetryableError(f"Kafka refused a record: {err.str()}"))
            return
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(None)

    def fail(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_exception(RetryableError(reason))


class Publisher:
    """Publishes records to one topic with an idempotent, acks=all producer.

    :meth:`publish` returns only once Kafka confirmed every record of the call. The
    event loop itself serves the producer's callbacks: a pump task polls it every
    ``tick`` seconds while records are in flight (on every loop iteration while acks keep
    arriving) and sleeps while none are. Polling on the loop's thread, rather than from
    a thread of its own, spares a GIL hand-off and a loop wake-up per delivery.

    The pump also fails batches whose confirmation is overdue. Every batch gets the same
    timeout, so deadlines come in publish order and one queue, checked from its head on
    every tick, replaces a timer per request (a ``call_later`` and its ``cancel`` cost
    ~4 us of the event loop per request in the gateway).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        confirm_timeout: float = 5.0,
        linger_ms: float = 0.0,
        max_record_bytes: int = 1_000_000,
        probe_timeout: float = 2.0,
        tick: float = 0.001,
    ) -> None:
        self.topic = topic
        self.confirm_timeout = confirm_timeout
        self.probe_timeout = probe_timeout
        self.tick = tick
        self._conf: dict[str, Any] = producer_config(
            settings,
            **{
                "linger.ms": linger_ms,
                "message.max.bytes": max_record_bytes,
                "error_cb": self._on_error,
                # Bounds memory while Kafka is down: callers get 503, Meta retries.
                "queue.buffering.max.kbytes": 64 * 1024,
                "log_level": 4,
            },
        )
        self._producer: Producer | None = None
        # (deadline on the loop's clock, batch), in publish order.
        self._waiting: deque[tuple[float, _Batch]] = deque()
        self._pump_task: asyncio.Task[None] | None = None
        self._busy = asyncio.Event()
        self._fatal: str | None = None
        self._probe: asyncio.Future[tuple[bool, str]] | None = None

    @property
    def fatal(self) -> str | None:
        """Why the producer can no longer work, if so (the process must be restarted)."""
        return self._fatal

    def start(self) -> None:
        """Create the producer and its pump task (call from the running event loop)."""
        self._producer = Producer(self._conf)
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(self._producer))
        self._pump_task.add_done_callback(self._pump_ended)

    def _pump_ended(self, task: asyncio.Task[None]) -> None:
        # Without the pump no confirmation ever arrives: say so instead of timing out.
        if not task.cancelled() and task.exception() is not None:
            self._fatal = f"delivery pump failed: {task.exception()!r}"
            log.error("Kafka %s", self._fatal)
        # Nothing expires the batches still waiting now: fail them (a 503) at once.
        self._expire(float("inf"), "Kafka delivery pump stopped")

    def _expire(self, now: float, reason: str | None = None) -> None:
        """Drop confirmed batches from the head of the queue; fail those overdue at ``now``."""
        waiting = self._waiting
        while waiting:
            deadline, batch = waiting[0]
            if not batch.future.done():
                if deadline > now:
                    return
                batch.fail(reason or f"Kafka did not confirm within {self.confirm_timeout:g}s")
            waiting.popleft()

    def pause_after(self, served: int) -> float:
        """Return how long the pump waits, records in flight, after serving ``served`` events.

        A poll that served deliveries means acks are flowing: under load the next ones are
        already on their way, so the pump looks again on the loop's next iteration. Waiting
        a tick instead bounded a loaded gateway by its 32 connections' round trips
        (11,300 req/s with admission cached) instead of by the loop (17,500; see
        docs/gateway.md). A poll that served nothing waits the tick: no spinning while
        the broker is slow or the load light.
        """
        return 0.0 if served else self.tick

    async def _pump(self, producer: Producer) -> None:
        loop = asyncio.get_running_loop()
        while True:
            served = producer.poll(0)
            if self._waiting:
                self._expire(loop.time())
            if len(producer):
                await asyncio.sleep(self.pause_after(served))
                continue
            # Idle: wake on the next publish, or after a while for error callbacks.
            self._busy.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._busy.wait()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = f"fatal producer error: {err.str()}"
            log.error("Kafka producer fatal error: %s", err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("Kafka: all brokers down (%s)", err.str())
        else:
            log.warning("Kafka producer error: %s", err.str())

    async def publish(self, records: Sequence[Record], extra: Sequence[Extra] = ()) -> float:
        """Produce ``records`` (and ``extra``) and wait until Kafka confirmed all of them.

        Returns the seconds it took. Raises :class:`RetryableError` when the producer
        is not started or failed fatally, its queue is full, a record is refused, or
        confirmation takes longer than ``confirm_timeout`` seconds. Records produced before a
        failure may still be written later: that is safe, event ids are deterministic.
        """
        producer = self._producer
        if producer is None:
            raise RetryableError("publisher is not started")
        if self._fatal is not None:
            raise RetryableError(f"Kafka producer failed: {self._fatal}")
        if self._pump_task is None or self._pump_task.done():
            # Nothing would confirm (or expire) the records: refuse before producing them.
            raise RetryableError("Kafka delivery pump is not running")
        if not records and not extra:
            return 0.0
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        batch = _Batch(loop, len(records) + len(extra))
        try:
            for key, value in records:
                producer.produce(self.topic, value=value, key=key, on_delivery=batch.on_delivery)
            for topic, xkey, xvalue, headers in extra:
                producer.produce(
                    topic, value=xvalue, key=xkey, headers=headers, on_delivery=batch.on_delivery
                )
        except BufferError as e:
            raise RetryableError("Kafka producer queue is full") from e
        except KafkaException as e:
            raise RetryableError(f"Kafka produce failed: {e}") from e
        finally:
            self._busy.set()
        # The pump fails it after confirm_timeout: no timer or task of its own.
        self._waiting.append((loop.time() + self.confirm_timeout, batch))
        await batch.future
        return time.perf_counter() - started

    async def ready(self) -> tuple[bool, str]:
        """Return whether the producer is healthy and sees the topic with leaders, and why.

        Concurrent callers share one probe: the probe blocks a thread for up to
        ``probe_timeout`` while Kafka is down, and probes piling up (a load balancer and
        Kubernetes asking every second, each retrying) took every thread of the loop's
        default executor, the one shutdown's flush needs too.
        """
        producer = self._producer
        if producer is None:
            return False, "not started"
        if self._fatal is not None:
            return False, "producer failed"
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.ensure_future(self._check(producer))
        # A caller that goes away (its client disconnected) does not cancel the others'.
        return await asyncio.shield(probe)

    async def _check(self, producer: Producer) -> tuple[bool, str]:
        try:
            md = await asyncio.to_thread(
                producer.list_topics, self.topic, timeout=self.probe_timeout
            )
        except KafkaException as e:
            return False, f"Kafka unreachable: {e.args[0].str() if e.args else e}"
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return False, f"topic {self.topic} unavailable"
        if any(p.leader < 0 for p in topic.partitions.values()):
            return False, f"topic {self.topic} has partitions without a leader"
        return True, "ok"

    async def close(self, *, flush_timeout: float = 10.0) -> int:
        """Stop the pump and flush what is queued (up to ``flush_timeout`` s).

        Returns the number of records still undelivered.
        """
        producer = self._producer
        if producer is None:
            return 0
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        # The pump's end already failed every batch still waiting (_pump_ended).
        left = int(await asyncio.to_thread(producer.flush, flush_timeout))
        self._producer = None
        if left:
            log.warning("%d records left unconfirmed at shutdown", left)
            # Their requests were already answered 503 (Meta retries them), so they are
            # dropped here rather than retried by a client that is going away: otherwise
            # librdkafka keeps the client alive, reconnecting, until the process exits.
            producer.purge()
            producer.flush(0)
        return left
