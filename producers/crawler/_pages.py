"""The page runners of a worker: each page's records, one step at a time, pages at once.

A page's records are handled in partition order by one task of its own, which lives
while the page has records to handle (records may name any page: an idle runner is
forgotten). While the worker owns the partition, a runner runs its page's continuation
at once from memory (*following*) instead of waiting to read it back from Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from producers.crawler._handler import RecordHandler
from producers.crawler._offsets import PartitionBook
from schemas.crawl import CrawlRequest

log = logging.getLogger(__name__)

# How long a step waits for the commit that proves the page's previous step (one that
# ended its crawl) before it goes on regardless; see PageRunners._proven.
PROOF_WAIT = 10.0


@dataclass(slots=True)
class PageRunner:
    """The task and the queued records of one page."""

    partition: int
    queue: asyncio.Queue[tuple[int, int, bytes | None]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    # The commit issued after the page's last record (resolves when Kafka answered).
    commit: asyncio.Future[None] | None = None
    # True while a step runs (a stop waits for it, a little).
    busy: bool = False
    # The last step ended its crawl: only its commit proves it handled.
    unproven: bool = False


class PageRunners:
    """Runs each page's records in order through ``handler``; pages run concurrently,
    at most ``slots`` steps at once.

    ``books`` are the worker's partition books (a partition missing from it is gone);
    ``commit(partition)`` commits a partition and returns a future of Kafka's answer;
    ``on_fatal`` is told of an error that must stop the worker.
    """

    def __init__(
        self,
        handler: RecordHandler,
        books: dict[int, PartitionBook],
        *,
        slots: int,
        commit: Callable[[int], asyncio.Future[None]],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.handler = handler
        self.books = books
        self.commit = commit
        self.on_fatal = on_fatal
        self.runners: dict[str, PageRunner] = {}
        self.stopping = False
        self._slots = asyncio.Semaphore(slots)

    def busy(self) -> bool:
        """Return True while any page's step runs (safe from another thread)."""
        return any(r.busy for r in list(self.runners.values()))

    def put(self, partition: int, offset: int, page: str, value: bytes | None) -> None:
        """Queue a record read from ``partition`` for its page (loop thread)."""
        runner = self.runners.get(page)
        if runner is None or runner.partition != partition:
            runner = PageRunner(partition)
            runner.task = asyncio.get_running_loop().create_task(self._loop(page, runner))
            self.runners[page] = runner
        runner.queue.put_nowait((partition, offset, value))

    def drop(self, partition: int) -> None:
        """Cancel and forget the runners of ``partition`` (it is revoked or lost)."""
        for page, runner in list(self.runners.items()):
            if runner.partition == partition:
                if runner.task is not None:
                    runner.task.cancel()
                del self.runners[page]

    async def abandon(self) -> None:
        """Cancel every runner and wait for the tasks to end (shutdown)."""
        tasks = [r.task for r in self.runners.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, page: str, runner: PageRunner) -> None:
        # The continuation this page's last step produced. While this worker still owns
        # the partition it runs it at once instead of waiting to read it back from Kafka;
        # the copy read back later is then a duplicate by the marks. Records already read
        # for the page go first, in partition order (a second request must find the
        # crawl running and join it).
        follow: CrawlRequest | None = None
        while True:
            if self.stopping:
                # no new step once stopping; this task is cancelled at shutdown
                await asyncio.Event().wait()
            offset: int | None
            value: bytes | CrawlRequest | None
            if follow is not None and runner.queue.empty() and self._may_follow(page, runner):
                partition, offset, value = runner.partition, None, follow
            elif follow is None and runner.queue.empty():
                # Idle: the task ends and its runner is forgotten, so a page costs
                # nothing once its records are handled (records may name any page).
                await self._retire(page, runner)
                if runner.queue.empty():
                    return
                continue
            else:
                partition, offset, value = await runner.queue.get()
            runner.busy = True
            try:
                async with self._slots:
                    handled = await self.handler.handle(
                        page,
                        partition,
                        offset,
                        value,
                        self.books.get(partition),
                        before_fetch=lambda: self._prove(runner),
                    )
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                log.exception("crawler page task for %s failed; stopping the worker", page)
                self.on_fatal(e)
                runner.busy = False
                raise
            if handled.ended is not None:
                runner.unproven = handled.ended
            if handled.follow is not None or value is follow:
                follow = handled.follow
            book = self.books.get(partition)
            if book is not None:
                if offset is None:
                    book.dirty = True
                else:
                    book.finish(offset)
                runner.commit = self.commit(partition)
            runner.busy = False

    async def _prove(self, runner: PageRunner) -> None:
        """Wait for the commit that proves the page's last step, if it ended its crawl:
        the next step must not fetch before (a kill would then cost two steps)."""
        if runner.unproven and runner.commit is not None:
            await self._proven(runner)

    async def _retire(self, page: str, runner: PageRunner) -> None:
        """Forget an idle ``runner``; first wait for the commit that proves its last step
        handled, if that step ended its crawl (a new runner of the page would not know
        to wait)."""
        if runner.unproven and runner.commit is not None:
            await self._proven(runner)
            runner.unproven = False
        if runner.queue.empty() and self.runners.get(page) is runner:
            del self.runners[page]

    async def _proven(self, runner: PageRunner) -> None:
        assert runner.commit is not None
        try:
            await asyncio.wait_for(asyncio.shield(runner.commit), PROOF_WAIT)
        except TimeoutError:
            log.warning(
                "no answer to a commit of crawl partition %d in %.0fs",
                runner.partition,
                PROOF_WAIT,
            )

    def _may_follow(self, page: str, runner: PageRunner) -> bool:
        """Return True if ``runner`` may run its page's continuation without reading it."""
        return (
            not self.stopping
            and self.runners.get(page) is runner
            and runner.partition in self.books
        )
