"""Running crawls' progress, written for all of a worker's pages at once.

A step of a running crawl does not wait for its progress write: it leaves the
cumulative state with :meth:`ProgressBuffer.offer` (one entry per page, the newest
replacing the older), and :meth:`ProgressBuffer.run_forever` writes what is there every
``progress_interval`` in one transaction (``CrawlStateStore.project_running``). With
200 pages at 2 calls/s that is two pipelined statements every interval instead of ~400
transactions a second, which were the largest part of a worker's CPU
(docs/performance.md, *Crawler*).

The writes that matter for correctness (a crawl's start, its end, a failure, a pause, a
skipped conversation) stay synchronous through :meth:`ProgressBuffer.write`, which holds
the same lock as a flush and first drops the page's pending entry: a flush in progress
lands before them, and a stale entry is never written after them (the SQL's
``step_seq`` and status guards would refuse it too). A running entry lost to a crash or
to an outage (the flush logs it and drops the batch) costs nothing: progress is
cumulative and the page's next step offers it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from convsync.errors import ConvsyncError
from producers.crawler.state import CrawlStateStore, Progress

log = logging.getLogger(__name__)


class ProgressBuffer:
    """The latest running progress per page (bounded by the pages in flight), flushed
    every ``interval`` seconds; ``interval`` 0 writes each one at once."""

    def __init__(self, store: CrawlStateStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.pending: dict[str, Progress] = {}
        self.lock = asyncio.Lock()
        self.flushes = 0

    async def offer(self, progress: Progress) -> None:
        """Keep ``progress`` (a running crawl's) for the next flush."""
        if self.interval <= 0:
            await self.write(progress.record.page_id, lambda: self.store.project(progress))
            return
        self.pending[progress.record.page_id] = progress

    async def write(self, page_id: str, action: Callable[[], Awaitable[None]]) -> None:
        """Run the synchronous write ``action`` of ``page_id``, after any flush in
        progress and instead of the page's pending entry."""
        async with self.lock:
            self.pending.pop(page_id, None)
            await action()

    async def flush(self) -> None:
        """Write every pending entry in one transaction. Raises like ``project``."""
        async with self.lock:
            batch = list(self.pending.values())
            self.pending.clear()
            if batch:
                self.flushes += 1
                await self.store.project_running(batch)

    async def run_forever(self) -> None:
        """Flush every ``interval`` until cancelled; a failed flush is logged and its
        batch dropped (the next steps offer newer progress)."""
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except ConvsyncError as e:
                log.warning("crawl progress not written (the next steps write it): %s", e)
