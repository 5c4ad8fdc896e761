"""Under at_least_once, the next batches fold while the ones before wait for their acks.

A batch's writes are four stages (:meth:`streams.folder.Folder.stages`: change records and
dead letters, sealed digest chunks, states, edits), each sent and then awaited until
Kafka acknowledged it (acks=all); a stage goes only once the one before is durable, the
order a crash needs. Before, the worker had nothing to do meanwhile but take in the next
batch. Here the next batches are folded into memory meanwhile
(:meth:`streams.folder.Folder.fold`), and the stages of successive batches overlap as a
wavefront: a batch's stage ``j`` starts once its own stage ``j - 1`` and the batch
before's stage ``j`` are durable. So each topic's records are sent in batch order (each
partition keeps batch order), a batch's states never go out before the change records
of that batch and of every batch before it are durable, and batches are acked in order.
At most ``depth`` batches are folded and not yet acknowledged (a broker that answers
late for a second holds up the writes, not the folds behind them).

What must hold, and how:

- *No event is acked before its batch's writes are durable.* The batch is acked by the
  task that wrote it, after its last stage is durable and the batch before is acked
  (``take_batches(..., caller_acks=True)``).
- *A batch whose fold began is written, whatever comes.* Its states are in memory: if it
  were dropped while the worker kept its partitions, faust would hand its events over
  again, the fold would take them for copies already folded in and emit nothing. So the
  fold and the queueing of its writes run to their end under ``finish`` (the shielded
  run of :func:`streams.agent.finish`, which crashes the worker when the work fails), the
  writes themselves run under ``finish`` in tasks of their own, and the agent drains
  them all before it stops.
- *A failed write stops everything.* The writes run under ``finish`` too: a refused
  record crashes the worker before the batch (or any later one) is acked, and the
  batches behind, waiting for its stages, fail with it and send no further stage.
- *A rebalance waits.* faust's revocation waits for every event handed out to be acked
  (``wait_empty``); the writes in flight ack theirs when they are durable.

Under exactly_once the agent folds and writes each batch in turn (:func:`fold_batch`):
the records join the transaction of their partition, which faust commits on its own
schedule with the acked offsets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

Batch = TypeVar("Batch")
Plan = TypeVar("Plan")
Stage = Callable[[], Awaitable[None]]


class _Written:
    """One batch's writes in flight: when each of its stages and its ack are done."""

    def __init__(self, n_stages: int) -> None:
        loop = asyncio.get_running_loop()
        self.stages: list[asyncio.Future[None]] = [loop.create_future() for _ in range(n_stages)]
        self.acked: asyncio.Future[None] = loop.create_future()

    def stage(self, j: int) -> asyncio.Future[None]:
        """Done once this batch's stage ``j`` is durable (or its last, if it has fewer)."""
        return self.stages[min(j, len(self.stages) - 1)] if self.stages else self.acked

    def fail(self, error: BaseException) -> None:
        """Pass ``error`` on to the batches behind, which wait for this one's stages."""
        for future in (*self.stages, self.acked):
            if future.done():
                continue
            if isinstance(error, Exception):
                future.set_exception(error)
                future.exception()  # raised by this batch's task; no "never retrieved"
            else:
                future.cancel()


class Pipeline(Generic[Batch, Plan]):
    """Fold batches while the ones before are written; write each stage in batch order.

    A batch's writes are stages (change records, chunks, states, edits), each awaited
    until Kafka acknowledged it. A batch's stage ``j`` starts once its own stage ``j - 1``
    and the batch before's stage ``j`` are durable, so batches' stages overlap as a
    wavefront; batches are acked in order. At most ``depth`` batches are folded and not
    yet acknowledged: :meth:`add` waits for the oldest one beyond that.
    """

    def __init__(
        self,
        *,
        fold: Callable[[Batch], Awaitable[Plan]],
        stages: Callable[[Plan], Sequence[Stage]],
        ack: Callable[[Batch], Awaitable[None]],
        finish: Callable[[Coroutine[Any, Any, None]], Awaitable[None]],
        on_written: Callable[[], None] = lambda: None,
        depth: int = 1,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._fold = fold
        self._stages = stages
        self._ack = ack
        self._finish = finish
        self._on_written = on_written
        self.depth = depth
        self._out: deque[asyncio.Future[None]] = deque()  # writing tasks, oldest first
        self._last: _Written | None = None  # the batch the next one's stages wait for

    def writing(self) -> bool:
        """True while a batch's writes are out (not yet acknowledged by Kafka)."""
        return any(not task.done() for task in self._out)

    async def add(self, batch: Batch) -> None:
        """Fold ``batch`` and queue its writes behind those of the batches before it.

        Returns once its writes are queued (not once they are durable), after waiting
        for the oldest batch's writes if ``depth`` batches' writes are out. A
        cancellation meanwhile is held until then, and raised after.
        """
        await self._finish(self._add(batch))

    async def _add(self, batch: Batch) -> None:
        plan = await self._fold(batch)
        stages = self._stages(plan)
        previous, written = self._last, _Written(len(stages))
        self._last = written
        self._out.append(
            asyncio.ensure_future(
                self._finish(self._write_and_ack(previous, written, stages, batch))
            )
        )
        while self._out and self._out[0].done():
            self._out.popleft().result()
        while len(self._out) > self.depth:
            await self._out.popleft()

    async def _write_and_ack(
        self,
        previous: _Written | None,
        written: _Written,
        stages: Sequence[Stage],
        batch: Batch,
    ) -> None:
        try:
            for j, stage in enumerate(stages):
                if previous is not None:
                    await previous.stage(j)  # every batch before has this stage durable
                await stage()
                written.stages[j].set_result(None)
            if previous is not None:
                await previous.acked  # acks in batch order
            await self._ack(batch)
            written.acked.set_result(None)
        except BaseException as e:
            written.fail(e)
            raise
        self._on_written()

    async def drain(self) -> None:
        """Wait until every batch's writes are durable and every batch is acked."""
        if self._out:
            await self._finish(self._drained())

    async def _drained(self) -> None:
        tasks = list(self._out)
        self._out.clear()
        # Every batch awaited, oldest first: the first failure is the batch it hit.
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
