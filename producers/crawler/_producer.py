"""A confluent-kafka producer awaited from asyncio: produce a batch, await every ack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from convsync.errors import RetryableError


class AsyncProducer:
    """Wraps a durable producer; :meth:`send_batch` returns once Kafka confirmed all."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._pending = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start serving delivery callbacks on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            self.producer.poll(0)
            await asyncio.sleep(0.001 if self._pending else 0.01)

    async def send_batch(self, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
        """Produce ``(key, value)`` records; return how many once all are acknowledged.

        Raises :class:`RetryableError` if any record could not be delivered.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        errors: list[KafkaError] = []
        state = {"left": 0, "sent": False}

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            self._pending -= 1
            if err is not None:
                errors.append(err)
            state["left"] -= 1
            if state["sent"] and state["left"] == 0 and not done.done():
                done.set_result(None)

        count = 0
        for key, value in records:
            while True:
                try:
                    self.producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0)
                    await asyncio.sleep(0.005)
                except KafkaException as e:
                    raise RetryableError(f"produce to {topic} failed: {e}") from e
            state["left"] += 1
            self._pending += 1
            count += 1
        state["sent"] = True
        if state["left"] == 0 and not done.done():
            done.set_result(None)
        # Serve the callbacks right away instead of waiting for the idle poller's tick.
        while not done.done():
            self.producer.poll(0)
            if not done.done():
                await asyncio.sleep(0.0005)
        if errors:
            raise RetryableError(f"{len(errors)} records to {topic} not delivered: {errors[0]}")
        return count

    async def close(self, flush_seconds: float = 10.0) -> None:
        """Stop polling and flush what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, flush_seconds)
