"""streams.agent.fold_batch: a batch is acked only once its effects are durable."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import pytest

import streams.agent as app

pytestmark = pytest.mark.asyncio


class CrashedError(Exception):
    """What the patched crash() raises instead of ending the process."""


class Folder:
    def __init__(self, *, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.done = False
        self.fail = fail

    async def process(self, _batch: Any) -> None:
        await self.release.wait()
        if self.fail:
            raise RuntimeError("Kafka refused a change record")
        self.done = True


@pytest.fixture
def crashes(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    seen: list[BaseException] = []

    def crash(error: BaseException) -> NoReturn:
        seen.append(error)
        raise CrashedError from error

    monkeypatch.setattr(app, "crash", crash)
    return seen


async def _cancel_times(folder: Folder, times: int) -> asyncio.Task[None]:
    task = asyncio.ensure_future(app.fold_batch(folder, []))  # type: ignore[arg-type]
    for _ in range(times):
        await asyncio.sleep(0.01)
        task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done(), "the batch must finish before the cancellation propagates"
    folder.release.set()
    return task


@pytest.mark.parametrize("times", [1, 2, 5])
async def test_a_stop_mid_batch_lets_the_batch_finish_then_propagates(
    crashes: list[BaseException], times: int
) -> None:
    # A stop cancels the agent, sometimes more than once. Until 2026-12-02 the second
    # cancellation crashed the worker (exit 70) although its batch completed.
    folder = Folder()
    task = await _cancel_times(folder, times)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert folder.done
    assert crashes == []


async def test_a_batch_that_fails_after_a_cancellation_crashes(
    crashes: list[BaseException],
) -> None:
    folder = Folder(fail=True)
    task = await _cancel_times(folder, 2)
    with pytest.raises(CrashedError):
        await task
    assert isinstance(crashes[0], RuntimeError)


async def test_a_batch_that_fails_crashes_before_the_ack(crashes: list[BaseException]) -> None:
    folder = Folder(fail=True)
    folder.release.set()
    with pytest.raises(CrashedError):
        await app.fold_batch(folder, [])  # type: ignore[arg-type]
    assert not folder.done
