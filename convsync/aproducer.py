"""A confluent-kafka producer awaited from asyncio: produce a batch, await every ack.

Used by the crawler (its envelopes and requests) and by the streams worker (its change
records and changelogs under at_least_once): librdkafka keeps up to five requests in
flight per broker, in order (idempotence), where aiokafka keeps one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from convsync.errors import RetryableError


class AsyncProducer:
    """Wraps a durable producer; :meth:`send_batch` returns once Kafka confirmed all.

    A thread of its own blocks in ``poll`` and hands each batch's outcome to the loop,
    so waiting for acks costs no busy polling on the event loop.
    """

    def __init__(self, producer: Producer, *, name: str = "producer-acks") -> None:
        self.producer = producer
        self.name = name  # the poll thread's name (seen in profiles and thread dumps)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start serving delivery callbacks."""
        self._thread = threading.Thread(target=self._poll, name=self.name, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

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

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            # Runs on the poll thread. ``left`` may go below zero while records are still
            # being produced: only the count added once all are produced can end the batch.
            with lock:
                if err is not None:
                    errors.append(err)
                state["left"] -= 1
                finished = state["sent"] and state["left"] == 0
            if finished:
                loop.call_soon_threadsafe(resolve)

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
        await done
        if errors:
            raise RetryableError(f"{len(errors)} records to {topic} not delivered: {errors[0]}")
        return count

    async def close(self, flush_seconds: float = 10.0) -> None:
        """Flush what is left and stop the poll thread."""
        await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, flush_seconds)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
