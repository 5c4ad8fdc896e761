"""streams/pipeline.py: the next batch folds while the one before waits for its acks.

The fold, the writes and the acks are stand-ins recording what happened when; the
shielded run is the worker's own (``streams.agent.finish``) with its crash patched to
raise. The worker on the real broker runs this path in every at-least-once test of
tests/streams (test_failures: a refused write crashes it with nothing acked past it;
test_kill: kills and rebalances lose and double nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import NoReturn

import pytest

import streams.agent as app
from streams.pipeline import Pipeline

pytestmark = pytest.mark.asyncio


class CrashedError(Exception):
    """What the patched crash() raises instead of ending the process."""


@pytest.fixture
def crashes(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    seen: list[BaseException] = []

    def crash(error: BaseException) -> NoReturn:
        seen.append(error)
        raise CrashedError from error

    monkeypatch.setattr(app, "crash", crash)
    return seen


class Worker:
    """Records the order of folds, writes and acks; each write waits for its release."""

    def __init__(self, *, failing: str = "") -> None:
        self.log: list[str] = []
        self.acks: dict[str, asyncio.Event] = {}
        self.failing = failing

    async def fold(self, batch: str) -> str:
        self.log.append(f"fold {batch}")
        self.acks[batch] = asyncio.Event()
        return f"plan {batch}"

    async def write(self, plan: str) -> None:
        batch = plan.removeprefix("plan ")
        self.log.append(f"write {batch}")
        await self.acks[batch].wait()
        if batch == self.failing:
            raise RuntimeError(f"Kafka refused a record of {batch}")
        self.log.append(f"durable {batch}")

    async def ack(self, batch: str) -> None:
        self.log.append(f"ack {batch}")

    def stages(self, plan: str) -> list[Callable[[], Awaitable[None]]]:
        return [partial(self.write, plan)]

    def pipeline(self, depth: int = 1) -> Pipeline[str, str]:
        return Pipeline(
            fold=self.fold, stages=self.stages, ack=self.ack, finish=app.finish, depth=depth
        )


class Staged(Worker):
    """Each batch written in two stages, each waiting for its own release."""

    async def fold(self, batch: str) -> str:
        self.log.append(f"fold {batch}")
        for j in (1, 2):
            self.acks[f"{batch}.{j}"] = asyncio.Event()
        return f"plan {batch}"

    async def send(self, name: str) -> None:
        self.log.append(f"send {name}")
        await self.acks[name].wait()
        if name == self.failing:
            raise RuntimeError(f"Kafka refused a record of {name}")
        self.log.append(f"durable {name}")

    def stages(self, plan: str) -> list[Callable[[], Awaitable[None]]]:
        batch = plan.removeprefix("plan ")
        return [partial(self.send, f"{batch}.1"), partial(self.send, f"{batch}.2")]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_next_batch_folds_while_the_one_before_is_written(
    crashes: list[BaseException],
) -> None:
    worker = Worker()
    line = worker.pipeline()
    await line.add("a")
    await _settle()
    assert worker.log == ["fold a", "write a"]
    assert line.writing()
    adding = asyncio.ensure_future(line.add("b"))
    await _settle()
    # b is folded while a's writes are out, but its writes wait for a's acks ...
    assert worker.log == ["fold a", "write a", "fold b"]
    assert not adding.done()
    worker.acks["a"].set()
    await adding
    await _settle()
    # ... and a is acked only once its writes are durable.
    assert worker.log == ["fold a", "write a", "fold b", "durable a", "ack a", "write b"]
    worker.acks["b"].set()
    await line.drain()
    assert worker.log[-2:] == ["durable b", "ack b"]
    assert not line.writing()
    assert crashes == []


async def test_a_stop_waits_for_the_folded_batch_to_be_written_and_acked(
    crashes: list[BaseException],
) -> None:
    worker = Worker()
    line = worker.pipeline()
    await line.add("a")
    adding = asyncio.ensure_future(line.add("b"))
    await _settle()
    adding.cancel()  # a stop while b, folded, waits for a's writes
    await _settle()
    assert not adding.done(), "a folded batch must be written before the stop propagates"
    worker.acks["a"].set()
    with pytest.raises(asyncio.CancelledError):
        await adding
    assert worker.log[-1] == "write b"  # b's writes started before the cancellation rose
    draining = asyncio.ensure_future(line.drain())
    await _settle()
    draining.cancel()  # stopped again while the agent drains: still waited out
    worker.acks["b"].set()
    with pytest.raises(asyncio.CancelledError):
        await draining
    assert worker.log[-2:] == ["durable b", "ack b"]
    assert crashes == []


async def test_a_failed_write_crashes_before_its_batch_or_a_later_one_is_acked(
    crashes: list[BaseException],
) -> None:
    worker = Worker(failing="a")
    line = worker.pipeline()
    await line.add("a")
    adding = asyncio.ensure_future(line.add("b"))
    await _settle()
    worker.acks["a"].set()
    with pytest.raises(CrashedError):
        await adding
    assert isinstance(crashes[0], RuntimeError)
    assert not any(entry.startswith("ack") for entry in worker.log)
    assert "write b" not in worker.log
    with pytest.raises(CrashedError):  # b's writes, queued behind a's, crashed too
        await line.drain()


async def test_deeper_the_folds_go_on_while_writes_wait_and_writes_keep_their_order(
    crashes: list[BaseException],
) -> None:
    worker = Worker()
    line = worker.pipeline(depth=2)
    await line.add("a")
    await line.add("b")  # folded while a's writes are out; its writes queued behind
    await _settle()
    assert worker.log == ["fold a", "write a", "fold b"]
    adding = asyncio.ensure_future(line.add("c"))
    await _settle()
    assert worker.log[-1] == "fold c"
    assert not adding.done(), "three batches out: c waits for a's writes"
    worker.acks["b"].set()  # b's acks come first: b still waits for a
    await _settle()
    assert "write b" not in worker.log
    worker.acks["a"].set()
    await adding
    worker.acks["c"].set()
    await line.drain()
    assert [e for e in worker.log if not e.startswith("fold")] == [
        "write a", "durable a", "ack a",
        "write b", "durable b", "ack b",
        "write c", "durable c", "ack c",
    ]  # fmt: skip
    assert crashes == []


async def test_stages_of_successive_batches_overlap_each_in_batch_order(
    crashes: list[BaseException],
) -> None:
    worker = Staged()
    line = worker.pipeline(depth=4)
    await line.add("a")
    await line.add("b")
    await _settle()
    assert worker.log == ["fold a", "send a.1", "fold b"]  # b.1 waits for a.1
    worker.acks["a.1"].set()
    await _settle()
    # b's first stage goes out while a's second is out ...
    assert worker.log[-3:] == ["durable a.1", "send a.2", "send b.1"]
    worker.acks["b.1"].set()
    await _settle()
    # ... but b's second stage waits for a's second one, durable first.
    assert worker.log[-1] == "durable b.1"
    assert "send b.2" not in worker.log
    worker.acks["b.2"].set()  # b.2's ack may come early: b.2 is not even sent
    worker.acks["a.2"].set()
    await line.drain()
    assert worker.log[-5:] == ["durable a.2", "ack a", "send b.2", "durable b.2", "ack b"]
    assert crashes == []


async def test_a_failed_stage_stops_the_later_stages_and_acks_of_every_batch_behind(
    crashes: list[BaseException],
) -> None:
    worker = Staged(failing="a.2")
    line = worker.pipeline(depth=4)
    await line.add("a")
    await line.add("b")
    for name in ("a.1", "b.1", "b.2"):
        worker.acks[name].set()
        await _settle()
    assert "durable b.1" in worker.log
    worker.acks["a.2"].set()
    with pytest.raises(CrashedError):
        await line.drain()
    assert isinstance(crashes[0], RuntimeError)  # a's own failure crashes first
    assert "send b.2" not in worker.log
    assert not any(entry.startswith("ack") for entry in worker.log)
