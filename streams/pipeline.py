"""Under at_least_once, the next batch folds while the one before waits for its acks.

A batch's writes (:meth:`streams.app.Folder.write`) are four ordered sends, each waiting
for Kafka's acks (acks=all); most of that time the worker had nothing to do but take in
the next batch. Here the next batch is folded into memory meanwhile
(:meth:`streams.app.Folder.fold`), and its writes start once the batch before it was
acknowledged: at most one batch's writes are out, and they are sent in batch order, so
each partition's changelog keeps its order and the order of a batch's writes (change
records, then states, then edits) holds as before.

What must hold, and how:

- *No event is acked before its batch's writes are durable.* The batch is acked by the
  task that wrote it, after :meth:`Folder.write` returned (``take_batches(...,
  caller_acks=True)``).
- *A batch whose fold began is written, whatever comes.* Its states are in memory: if it
  were dropped while the worker kept its partitions, faust would hand its events over
  again, the fold would take them for copies already folded in and emit nothing. So the
  fold, the wait for the batch before and the start of the writes run to their end
  under ``finish`` (the shielded run of :func:`streams.app.finish`, which crashes the
  worker when the work fails), and the agent drains the last writes before it stops.
- *A failed write stops everything.* The writes run under ``finish`` too: a refused
  record crashes the worker before the batch (or any later one) is acked.
- *A rebalance waits.* faust's revocation waits for every event handed out to be acked
  (``wait_empty``); the writes in flight ack theirs when they are durable.

Under exactly_once the agent folds and writes each batch in turn (:func:`fold_batch`):
the records join the transaction of their partition, which faust commits on its own
schedule with the acked offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

Batch = TypeVar("Batch")
Plan = TypeVar("Plan")


class Pipeline(Generic[Batch, Plan]):
    """Fold a batch while the batch before it is written; write in batch order."""

    def __init__(
        self,
        *,
        fold: Callable[[Batch], Awaitable[Plan]],
        write: Callable[[Plan], Awaitable[None]],
        ack: Callable[[Batch], Awaitable[None]],
        finish: Callable[[Coroutine[Any, Any, None]], Awaitable[None]],
        on_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._fold = fold
        self._write = write
        self._ack = ack
        self._finish = finish
        self._on_written = on_written
        self._writing: asyncio.Future[None] | None = None

    def writing(self) -> bool:
        """True while a batch's writes are out (not yet acknowledged by Kafka)."""
        return self._writing is not None and not self._writing.done()

    async def add(self, batch: Batch) -> None:
        """Fold ``batch``, wait for the writes of the batch before, start its own.

        Returns once its writes started (not once they are durable). A cancellation
        meanwhile is held until then, and raised after.
        """
        await self._finish(self._add(batch))

    async def _add(self, batch: Batch) -> None:
        plan = await self._fold(batch)
        if self._writing is not None:
            await self._writing
        self._writing = asyncio.ensure_future(self._finish(self._write_and_ack(batch, plan)))

    async def _write_and_ack(self, batch: Batch, plan: Plan) -> None:
        await self._write(plan)
        await self._ack(batch)
        self._on_written()

    async def drain(self) -> None:
        """Wait until the last batch's writes are durable and it is acked."""
        if self._writing is not None:
            await self._finish(self._drained(self._writing))

    @staticmethod
    async def _drained(writing: asyncio.Future[None]) -> None:
        await writing
