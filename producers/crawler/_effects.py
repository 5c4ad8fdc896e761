"""The writes a crawl record's handling shares between its step and its other endings.

:class:`CrawlEffects` writes a crawl's state to Postgres (``project``, waited out through
outages by :func:`until_done`) and ends a crawl other than by its last step: failed,
paused on a page token that does not work (``reject``, ``pause``), refused with a dead
letter, or stopped because it was cancelled. Each ending writes its rows first and sets
the page's mark after (docs/crawler.md, *Order of a step*). :class:`WorkerStats` holds
the counts they and the step keep.

Separate from ``_handler.py``, which decides what a record asks for and runs the step:
the endings are the same whatever decided them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from convsync.aproducer import AsyncProducer
from convsync.errors import PoisonError, RetryableError
from convsync.pages import PageToken
from convsync.settings import Settings
from producers.crawler._offsets import Mark, PartitionBook
from producers.crawler._progress import ProgressBuffer
from producers.crawler.exceptions import ForeignUrlError, PageTokenError
from producers.crawler.graph import backoff
from producers.crawler.state import CrawlStateStore, Progress
from producers.crawler.tokens import PageTokens
from schemas.crawl import CrawlRequest
from schemas.records import dead_letter

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class WorkerStats:
    """Counts since start, for logs and tests."""

    steps: int = 0
    # steps run from this worker's own continuation, without reading it back from Kafka
    followed: int = 0
    duplicates: int = 0
    joined: int = 0
    failed: int = 0
    done: int = 0
    # crawls started from a failed crawl's cursor (resume.py)
    resumed: int = 0
    # crawls stopped because they were cancelled (DELETE /admin/crawls/{id})
    cancelled: int = 0
    # conversations skipped because reading them kept failing (resume.py)
    skipped_conversations: int = 0
    # steps not run because the page's token does not work (the crawl waits)
    paused: int = 0


class CrawlEffects:
    """A crawl's state written to Postgres and the endings of a crawl that its step did
    not end: failed, paused, refused, cancelled."""

    def __init__(
        self,
        settings: Settings,
        *,
        tokens: PageTokens,
        producer: AsyncProducer,
        store: CrawlStateStore,
        stats: WorkerStats,
        progress_interval: float = 0.0,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.producer = producer
        self.store = store
        self.stats = stats
        self.crawl_topic = settings.topic("crawl")
        # Pages whose running crawl has had its first progress written (by this worker).
        self.projected: set[str] = set()
        # Running crawls' progress, written for all pages at once (_progress.py).
        self.progress = ProgressBuffer(store, progress_interval)

    async def project(self, progress: Progress) -> None:
        """Write ``progress`` to ``crawl_state``/``crawl_history`` now, waiting out an
        outage (after any progress flush in progress, instead of the page's pending
        entry)."""
        store = self.store
        await self.progress.write(
            progress.record.page_id,
            lambda: until_done("crawl state write", lambda: store.project(progress)),
        )

    def end_cancelled(self, page_id: str, crawl_id: str, seq: int, book: PartitionBook) -> None:
        """End the cancelled crawl ``crawl_id``: its finished mark, no continuation (its
        rows say "cancelled" already; the canceller wrote them)."""
        self.stats.cancelled += 1
        log.info("crawl %s of page %s was cancelled; stopping it", crawl_id, page_id)
        book.set_mark(page_id, Mark(crawl_id, seq, True))
        self.projected.discard(page_id)

    async def reject(
        self, record: CrawlRequest, token: PageToken, error: PageTokenError, paused: bytes | None
    ) -> str | None:
        """Mark the page whose token ``record`` used as refused, keeping ``paused``; return
        its status before, None if the token was replaced meanwhile."""
        tokens = self.tokens
        return await until_done(
            "page status write",
            lambda: tokens.rejected(
                record.graph_page, token, message=error.message, error=str(error), paused=paused
            ),
        )

    async def pause(
        self, record: CrawlRequest, book: PartitionBook, token: PageToken, error: PageTokenError
    ) -> bool:
        """Pause the crawl of ``record`` because the page's token does not work: the page
        goes to ``needs_reconnect`` and keeps the record that runs this step again (the
        cursor); ``tokens.resume_forever`` produces it once a new token is set. Return
        False if the token was replaced meanwhile (nothing paused: run the step again).

        Said once: only the step that moves the page out of ``active`` logs a warning.
        """
        again = record.model_copy(update={"seq": record.seq + 1})
        prior = await self.reject(record, token, error, again.to_bytes())
        if prior is None:
            return False
        self.stats.paused += 1
        if prior == "active":
            log.warning(
                "page %s: %s; crawl %s paused at step %d, its cursor kept (%s)",
                record.page_id,
                error.message,
                record.crawl_id,
                record.seq,
                error,
            )
        else:
            log.debug(
                "crawl %s of page %s paused (page %s)", record.crawl_id, record.page_id, prior
            )
        await self.project(Progress(record, "paused", record.step, record.seq, error=error.message))
        # Not finished: the kept record (seq + 1) continues this crawl, and a request
        # meanwhile joins it.
        book.set_mark(record.page_id, Mark(record.crawl_id, record.seq, False))
        self.projected.discard(record.page_id)
        return True

    async def fail(self, record: CrawlRequest, book: PartitionBook, reason: str) -> None:
        """Write the crawl of ``record`` as failed with ``reason``, then its finished mark."""
        self.stats.failed += 1
        log.error("crawl %s of page %s failed: %s", record.crawl_id, record.page_id, reason)
        # The finished mark only after "failed" is in Postgres (see step 4 of
        # RecordHandler._step in _handler.py).
        await self.project(
            Progress(
                record, "failed", record.step, record.seq + 1, error=reason, finished_ms=now_ms()
            )
        )
        book.set_mark(record.page_id, Mark(record.crawl_id, record.seq, True))
        self.projected.discard(record.page_id)

    async def refuse(
        self,
        page: str,
        record: CrawlRequest,
        book: PartitionBook,
        partition: int,
        offset: int | None,
        value: bytes | CrawlRequest | None,
        reason: str,
        *,
        ends: bool,
    ) -> None:
        """Dead-letter a record that points where a page token may not go and, when it
        would have started or continued a crawl (``ends``), fail that crawl. A request
        joining a running crawl, or a step of a crawl that is not the page's, fails
        nothing: it would not have run."""
        text = f"crawl record refused: {reason}; no request was sent"
        if offset is not None:
            raw = value.to_bytes() if isinstance(value, CrawlRequest) else value
            await self.dead_letter(page, partition, offset, raw, ForeignUrlError(text))
        if ends:
            await self.fail(record, book, text)

    async def dead_letter(
        self, page: str, partition: int, offset: int, value: bytes | None, error: PoisonError
    ) -> None:
        log.error("poison crawl record on partition %d: %s", partition, error)
        # Bounded: a crawl record near Kafka's limit must not make a letter over it.
        letter = dead_letter(
            component="crawler",
            topic=self.crawl_topic,
            partition=partition,
            offset=offset,
            key=page.encode(),
            value=value,
            reason=str(error),
            error_type=type(error).__name__,
            failed_at=now_ms(),
        )
        await self.producer.send_batch(
            self.settings.topic("dlq"), [(letter.key, letter.value)], headers=list(letter.headers)
        )


async def until_done(what: str, action: Callable[[], Awaitable[T]]) -> T:
    """Run ``action`` until Postgres takes it and return its result.

    An outage is waited out with capped, jittered backoff, never raised: the step
    waits (its record stays uncommitted) and goes on once Postgres is back. A stop
    or a revoke cancels the wait; the next owner then runs the step again.
    """
    attempt = 0
    while True:
        try:
            return await action()
        except RetryableError as e:
            attempt += 1
            delay = backoff(attempt, base=0.2, cap=5.0)
            log.warning("%s failed (%s); retry %d in %.1fs", what, e, attempt, delay)
            await asyncio.sleep(delay)


def now_ms() -> int:
    return int(time.time() * 1000)
