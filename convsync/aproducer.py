"""A confluent-kafka producer awaited from asyncio: produce a batch, await every ack.

Used by the crawler (its envelopes and requests) and by the streams worker (its change
records and changelogs under at_least_once): librdkafka keeps up to five requests in
flight per broker, in order (idempotence), where aiokafka keeps one.

The delivery reports are served on the event loop's own thread, by a task that polls the
producer every :data:`POLL_INTERVAL` while a batch waits for its acks. A thread blocked
in ``poll`` (``poll_thread=True``, what this was until 2026-12-07) must take the GIL back
for every report: with the loop busy, each report waited for the interpreter's switch
interval (5 ms) and cost both threads a hand-over (docs/performance.md, "Delivery
reports on the loop").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from convsync.errors import RetryableError

log = logging.getLogger(__name__)

#: Seconds between two polls of the delivery reports while a batch waits for its acks:
#: at most this late an ack is seen (a broker's round trip here is 1-3 ms).
POLL_INTERVAL: Final = 0.001


class AsyncProducer:
    """Wraps a durable producer; :meth:`send_batch` returns once Kafka confirmed all."""

    def __init__(
        self, producer: Producer, *, name: str = "producer-acks", poll_thread: bool = False
    ) -> None:
        self.producer = producer
        self.name = name  # the poll thread's or task's name (profiles, thread dumps)
        self._poll_thread = poll_thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Batches waiting for their acks, and the task polling for them (loop mode).
        self._waiting = 0
        self._pump: asyncio.Task[None] | None = None
        self._logged_at = float("-inf")  # when a failed poll was last logged (monotonic)

    def start(self) -> None:
        """Start the poll thread (``poll_thread``); a no-op otherwise: the loop's polling
        task runs while batches wait."""
        if self._poll_thread:
            self._thread = threading.Thread(target=self._poll, name=self.name, daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def _serve(self) -> None:
        """Serve the delivery reports ready now, on the loop's thread."""
        try:
            self.producer.poll(0)
        except Exception:  # the polling must go on for the batches waiting
            now = time.monotonic()
            if now - self._logged_at >= 1.0:  # at most one line a second
                self._logged_at = now
                log.exception("%s: serving delivery reports failed", self.name)

    async def _pump_reports(self) -> None:
        while self._waiting:
            self._serve()
            await asyncio.sleep(POLL_INTERVAL)

    def _ensure_pump(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(
                self._pump_reports(), name=self.name
            )

    async def send_batch(
        self,
        topic: str,
        records: Iterable[tuple[bytes | None, bytes]],
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        partition: int | None = None,
    ) -> int:
        """Produce ``(key, value)`` records (each with ``headers``) to ``partition`` (None:
        the partitioner's choice by key); return how many once all are acknowledged.

        Raises :class:`RetryableError` if any record could not be delivered.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        errors: list[KafkaError] = []
        lock = threading.Lock()
        state = {"left": 0, "sent": False}
        threaded = self._poll_thread

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            # On the poll thread, or on the loop's (inside poll). ``left`` may go below
            # zero while records are still being produced: only the count added once all
            # are produced can end the batch.
            with lock:
                if err is not None:
                    errors.append(err)
                state["left"] -= 1
                finished = state["sent"] and state["left"] == 0
            if finished:
                if threaded:
                    loop.call_soon_threadsafe(resolve)
                else:
                    resolve()

        # No partition argument at all when None: librdkafka's partitioner picks by key.
        to: dict[str, Any] = {} if partition is None else {"partition": partition}
        count = 0
        for key, value in records:
            while True:
                try:
                    self.producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=on_delivery, **to
                    )
                    break
                except BufferError:
                    if not threaded:
                        self._serve()  # the reports free the queue
                    await asyncio.sleep(0.005)
                except KafkaException as e:
                    raise RetryableError(f"produce to {topic} failed: {e}") from e
            count += 1
        with lock:
            state["left"] += count  # one lock for the batch, not one per record
            state["sent"] = True
            finished = state["left"] == 0
        if finished:
            resolve()
        self._waiting += 1
        try:
            if not threaded and not done.done():
                self._ensure_pump()
            await done
        finally:
            self._waiting -= 1
        if errors:
            raise RetryableError(f"{len(errors)} records to {topic} not delivered: {errors[0]}")
        return count

    async def close(self, flush_seconds: float = 10.0) -> None:
        """Flush what is left (for at most ``flush_seconds``) and stop polling."""
        loop = asyncio.get_running_loop()
        if self._poll_thread:
            await loop.run_in_executor(None, self.producer.flush, flush_seconds)
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5)
            return
        # On the loop: the reports' callbacks resolve futures of this loop.
        deadline = loop.time() + flush_seconds
        while len(self.producer) > 0 and loop.time() < deadline:
            self._serve()
            await asyncio.sleep(POLL_INTERVAL)
        self._serve()
