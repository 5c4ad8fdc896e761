"""The fold agent's body: batches off the events stream, folded (streams/folder.py) and
acked only once their writes are durable, in turn or pipelined (streams/pipeline.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Final, NoReturn

import faust

from convsync.observe import Heartbeat
from streams.faust_fixes import DISABLED, ack_batch, take_batches
from streams.faust_intake import Intake
from streams.folder import Folder, Plan
from streams.pipeline import Pipeline

log = logging.getLogger(__name__)

CRASH_EXIT_CODE: Final = 70  # EX_SOFTWARE: a batch failed; its events were not acked
# Batches folded and not yet acknowledged, at most (streams/pipeline.py): a broker that
# answers late for a while holds up the writes, not the folds behind them.
PIPELINE_DEPTH: Final = 4

Batch = list[faust.EventT[bytes]]


def crash(error: BaseException) -> NoReturn:
    """Log ``error`` and end the process at once with :data:`CRASH_EXIT_CODE`.

    No faust shutdown: that would ack the failed batch (take_events acks in a
    ``finally``) and commit its offsets. Like a SIGKILL at this point, which the design
    tolerates: the restart resumes from the committed offsets with the tables recovered.
    """
    log.critical("a batch failed; exiting without acking it", exc_info=error)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


async def fold_batch(folder: Folder, batch: Sequence[faust.EventT[bytes]]) -> None:
    """Fold ``batch`` so that its events are acked only if all its effects are durable.

    ``take_events()`` acks a batch's events however the loop body that got it ends,
    and faust's supervisor restarts an agent that raised: an error of
    :meth:`Folder.process` would skip the batch, offsets committed past events that
    produced nothing. So an error crashes the worker (:func:`crash`) before the ack. A
    cancellation (a stop or rebalance mid-batch) lets the batch finish first, shielded,
    then propagates: the ack that follows is then true (:func:`finish`).
    """
    await finish(folder.process(batch))


async def finish(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end whatever cancellations come meanwhile; then raise the
    cancellation, if one came. Crash the worker (:func:`crash`) if ``work`` fails.

    Further cancellations meanwhile (a stop that cancels the agent again) are waited out
    the same way; until 2026-12-02 a second one crashed a clean stop with exit 70. If the
    work fails, or is itself cancelled, the worker crashes.
    """
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as e:
            if task.cancelled():
                crash(e)  # the work itself was cancelled: its effects are unknown
            cancelled = e
            continue
        except Exception as e:  # noqa: BLE001 - any error: the batch must not be acked
            crash(e)
        break
    if cancelled is not None:
        raise cancelled


def pipelined(guarantee: str) -> bool:
    """Whether the agent folds a batch while the one before is written
    (streams/pipeline.py): under at_least_once, with F12's intake. ``"pipeline" in
    DISABLED`` (bench and tests only) folds and writes each batch in turn, as
    exactly_once does."""
    return guarantee == "at_least_once" and "F12" not in DISABLED and "pipeline" not in DISABLED


class FoldAgent:
    """What the fold agent runs on its stream (:meth:`run`), and whether it is busy."""

    def __init__(
        self,
        folder: Folder,
        intake: Intake,
        health: Heartbeat,
        *,
        size: int,
        within: float,
        guarantee: str,
    ) -> None:
        self.folder = folder
        self.intake = intake
        self.health = health
        self.size = size
        self.within = within
        self.guarantee = guarantee
        self.folding = False
        # While a batch's writes are out, /healthz follows them too (streams/pipeline.py).
        self._writing: Callable[[], bool] = lambda: False

    def busy(self) -> bool:
        """Whether a batch is being folded, or written by the pipeline."""
        return self.folding or self._writing()

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        """Fold the stream's batches until it stops."""
        # The batch intake works on the concrete Stream, not on the StreamT interface.
        assert isinstance(stream, faust.Stream)
        if pipelined(self.guarantee):
            await self._pipelined(stream)
        else:
            await self._serial(stream)

    def _batches(
        self, stream: faust.Stream[bytes], *, caller_acks: bool
    ) -> tuple[AsyncIterator[Batch], bool]:
        """The stream's batches, and whether this agent acks them (:func:`ack_batch`):
        F15's intake leaves the ack to its caller; F12's ``take_batches`` acks a batch
        when the loop body that got it ends, unless ``caller_acks``."""
        if self.intake.installed:
            return self.intake.batches(stream, self.within), True
        batches = take_batches(stream, self.size, self.within, caller_acks=caller_acks)
        return batches, caller_acks

    async def _serial(self, stream: faust.Stream[bytes]) -> None:
        batches, acks = self._batches(stream, caller_acks=False)
        async for batch in batches:
            try:
                self.folding = True
                await fold_batch(self.folder, batch)
                self.folding = False
                self.health.beat("folding")
            finally:  # as take_batches: on success, or a cancellation once folded
                if acks:
                    await ack_batch(stream, batch)

    async def _pipelined(self, stream: faust.Stream[bytes]) -> None:
        async def ack(batch: Batch) -> None:
            await ack_batch(stream, batch)

        line: Pipeline[Batch, Plan] = Pipeline(
            fold=self.folder.fold,
            # "staged" off (bench only): a batch's writes start once the batch before
            # is acked, one stage.
            stages=(
                (lambda plan: [partial(self.folder.write, plan)])
                if "staged" in DISABLED
                else self.folder.stages
            ),
            ack=ack,
            finish=finish,
            on_written=lambda: self.health.beat("folding"),
            depth=1 if "deep-pipeline" in DISABLED else PIPELINE_DEPTH,
        )
        self._writing = line.writing
        batches, _ = self._batches(stream, caller_acks=True)
        try:
            async for batch in batches:
                self.folding = True
                await line.add(batch)
                self.folding = False
        finally:
            await line.drain()
