"""The fold's writes under at_least_once: change records and changelogs through librdkafka.

aiokafka, which faust drives, keeps one produce request in flight per broker: each of the
fold's writes waits for the broker's answer to the one before (docs/performance.md,
"2026-12-06, late"). librdkafka keeps up to five in flight per broker, in order, with
idempotence on (``convsync.kafka.producer_config``, as the other components write). The
fold's ordering rules do not depend on the client: :class:`streams.folder.Folder` awaits
every ack of one step before the next step sends, and acks no event before all of its
batch's writes are acknowledged.

Under exactly_once the writes stay in faust's transactional producer (aiokafka), which
also commits the offsets. Dead letters stay in faust's producer too (they are rare).
``"F13" in streams.faust_fixes.DISABLED`` (bench and tests only) sends each record through
faust's producer (aiokafka) instead: ``bench_streams --sides faust,faust-no-f13``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

from convsync.aproducer import AsyncProducer
from convsync.kafka import make_producer
from convsync.settings import Settings
from streams.faust_fixes import DISABLED, Outbox

#: How long a stopping worker waits for writes still unacknowledged (those of a batch
#: that will not be acked: its events are folded again by the next owner).
CLOSE_SECONDS: Final = 5.0


class RdSender:
    """A librdkafka producer for the fold's records, started on its first send."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AsyncProducer | None = None

    def send(self, topic: str, outbox: Outbox) -> list[Awaitable[int]]:
        """Produce ``outbox`` to ``topic``, partition by partition; return one awaitable per
        partition that ends once Kafka acknowledged (acks=all) all of its records.

        An awaitable raises :class:`convsync.errors.RetryableError` when a record was
        refused or not confirmed in librdkafka's delivery timeout.
        """
        producer = self._producer
        if producer is None:
            # linger.ms 5 (the default of the durable producer): the fold sends a batch's
            # records at once and then waits for them, so little is gained by waiting
            # longer, and librdkafka sends what lingers while earlier requests are out.
            # Its delivery reports are served on the loop; ``"loop-acks" in DISABLED``
            # (bench only: the side faust-thread-acks) serves them on a thread of their own.
            producer = self._producer = AsyncProducer(
                make_producer(self.settings),
                name="streams-acks",
                poll_thread="loop-acks" in DISABLED,
            )
            producer.start()
        return [
            asyncio.ensure_future(producer.send_batch(topic, records, partition=partition))
            for partition, records in outbox.items()
            if records
        ]

    async def close(self) -> None:
        """Flush what is left (bounded by :data:`CLOSE_SECONDS`) and stop polling."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close(CLOSE_SECONDS)
