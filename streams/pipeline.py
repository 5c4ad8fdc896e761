"""Under at_least_once, the next batch folds while the one before waits for its acks.

A batch's writes (:meth:`streams.app.Folder.write`) are four ordered sends, each waiting
for Kafka's acks (acks=all); most of that time the worker had nothing to do but take in
the next batch. Here the next batches are folded into memory meanwhile
(:meth:`streams.app.Folder.fold`), and each batch's writes start once the batch before
it was acknowledged: they are sent in batch order, so each partition's changelog keeps
its order and the order of a batch's writes (change records, then states, then edits)
holds as before. At most ``depth`` batches are folded and not yet acknowledged (a
broker that answers late for a second holds up the writes, not the folds behind them).

What must hold, and how:

- *No event is acked before its batch's writes are durable.* The batch is acked by the
  task that wrote it, after :meth:`Folder.write` returned (``take_batches(...,
  caller_acks=True)``).
- *A batch whose fold began is written, whatever comes.* Its states are in memory: if it
  were dropped while the worker kept its partitions, faust would hand its events over
  again, the fold would take them for copies already folded in and emit nothing. So the
  fold and the queueing of its writes run to their end under ``finish`` (the shielded
  run of :func:`streams.app.finish`, which crashes the worker when the work fails), the
  writes themselves run under ``finish`` in tasks of their own, and the agent drains
  them all before it stops.
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
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

Batch = TypeVar("Batch")
Plan = TypeVar("Plan")


class Pipeline(Generic[Batch, Plan]):
    """Fold batches while the ones before are written; write in batch order.

    At most ``depth`` batches are folded and not yet acknowledged: :meth:`add` waits for
    the oldest one's writes beyond that.
    """

    def __init__(
        self,
        *,
        fold: Callable[[Batch], Awaitable[Plan]],
        write: Callable[[Plan], Awaitable[None]],
        ack: Callable[[Batch], Awaitable[None]],
        finish: Callable[[Coroutine[Any, Any, None]], Awaitable[None]],
        on_written: Callable[[], None] = lambda: None,
        depth: int = 1,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._fold = fold
        self._write = write
        self._ack = ack
        self._finish = finish
        self._on_written = on_written
        self.depth = depth
        self._out: deque[asyncio.Future[None]] = deque()  # writes not done, oldest first

    def writing(self) -> bool:
        """True while a batch's writes are out (not yet acknowledged by Kafka)."""
        return any(not w.done() for w in self._out)

    async def add(self, batch: Batch) -> None:
        """Fold ``batch`` and queue its writes after those of the batches before it.

        Returns once its writes are queued (not once they are durable), after waiting
        for the oldest batch's writes if ``depth`` batches' writes are out. A
        cancellation meanwhile is held until then, and raised after.
        """
        await self._finish(self._add(batch))

    async def _add(self, batch: Batch) -> None:
        plan = await self._fold(batch)
        previous = self._out[-1] if self._out else None
        self._out.append(
            asyncio.ensure_future(self._finish(self._write_and_ack(previous, batch, plan)))
        )
        while self._out and self._out[0].done():
            self._out.popleft().result()
        while len(self._out) > self.depth:
            await self._out.popleft()

    async def _write_and_ack(
        self, previous: asyncio.Future[None] | None, batch: Batch, plan: Plan
    ) -> None:
        if previous is not None:
            await previous  # the writes of every batch before this one are durable
        await self._write(plan)
        await self._ack(batch)
        self._on_written()

    async def drain(self) -> None:
        """Wait until every batch's writes are durable and every batch is acked."""
        if self._out:
            await self._finish(self._drained(self._out[-1]))

    @staticmethod
    async def _drained(last: asyncio.Future[None]) -> None:
        await last
