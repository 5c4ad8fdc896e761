"""Cancelled crawls, read for all of a worker's running crawls at once.

A crawl is cancelled in Postgres (``DELETE /admin/crawls/{id}``, ``request.cancel``: its
history row says ``cancelled``), and the worker running it stops it before a later step.
Reading that row before every step cost a query (and the pool's connection check) per
Graph call: at 200 pages and 2 calls/s a page, 400 queries a second, the largest part of
a worker's CPU after the Graph calls themselves (docs/performance.md, *Crawler*).
:meth:`CancelWatch.run_forever` reads, every ``interval``, which of the crawls the worker
stepped recently are cancelled, in one query; a step asks :meth:`CancelWatch.cancelled`,
which reads memory. A cancel is then noticed within ``interval`` plus the step in flight
(the state writes refuse to overwrite a cancelled row meanwhile: ``state.py``'s status
guards). ``interval`` 0 reads the row before each step, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from convsync.errors import ConvsyncError
from producers.crawler.state import CrawlStateStore

log = logging.getLogger(__name__)

# A crawl not stepped for this many intervals is no longer asked about (the set of crawls
# watched is bounded by the pages a worker steps, not by the crawls it ever ran).
FORGET_AFTER: Final = 20


class CancelWatch:
    """Which of the crawls this worker steps were cancelled, as of the last read."""

    def __init__(self, store: CrawlStateStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.stepped: dict[str, float] = {}  # crawl id -> when a step last asked (monotonic)
        self.known: set[str] = set()  # of those, the cancelled ones at the last read
        self.reads = 0

    async def cancelled(self, crawl_id: str) -> bool:
        """Return True if ``crawl_id`` was cancelled (as of the last read, or now when
        ``interval`` is 0). Raises like ``CrawlStateStore.request_status``."""
        if self.interval <= 0:
            return await self.store.request_status(crawl_id) == "cancelled"
        self.stepped[crawl_id] = time.monotonic()
        return crawl_id in self.known

    async def read(self) -> None:
        """Read which watched crawls are cancelled. Raises like ``cancelled_among``."""
        horizon = time.monotonic() - FORGET_AFTER * self.interval
        for crawl_id in [c for c, at in self.stepped.items() if at < horizon]:
            del self.stepped[crawl_id]
        if not self.stepped:
            self.known = set()
            return
        self.reads += 1
        self.known = await self.store.cancelled_among(list(self.stepped))

    async def run_forever(self) -> None:
        """Read every ``interval`` until cancelled; a failed read is logged and the last
        answer kept (the next read tries again)."""
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.read()
            except ConvsyncError as e:
                log.warning("cancelled crawls not read (the next read tries again): %s", e)
