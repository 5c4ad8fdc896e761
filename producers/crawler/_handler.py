"""One crawl record handled: what to do with it, the step it runs and the step's effects.

The effects of a step, in this order (the order is what makes a kill cost at most the
step in flight; docs/crawler.md, *Order of a step*): its events in Kafka, its
continuation in Kafka, the page's mark, its progress in Postgres, and for a step that
ended its crawl the finished mark only once the end is in Postgres.

The other endings of a crawl (failed, paused on a token, refused, cancelled), the
Postgres writes waited out through an outage and the counts are in ``_effects.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from convsync.aproducer import AsyncProducer
from convsync.errors import PoisonError, RetryableError
from convsync.pages import PageToken
from convsync.settings import Settings
from producers.crawler import resume
from producers.crawler._cancels import CancelWatch
from producers.crawler._effects import CrawlEffects, WorkerStats, now_ms, until_done
from producers.crawler._offsets import Mark, PartitionBook, decide
from producers.crawler.app_usage import AppLimiter
from producers.crawler.config import CrawlerSettings
from producers.crawler.contacts import ContactStore
from producers.crawler.exceptions import CrawlFailedError, PageTokenError
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import GraphClient, backoff
from producers.crawler.state import CrawlStateStore, Progress, Status
from producers.crawler.step import StepOutcome, record_refusal, run_step
from producers.crawler.tokens import PageTokens
from producers.crawler.urls import GraphOrigin
from schemas.crawl import CrawlRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Handled:
    """What handling one record left behind.

    ``follow`` is the continuation its step produced (None: none). ``ended`` says
    whether it ended its crawl: True, the end is proven only by the commit of its
    record; False, its continuation proves it; None, it ran no step (nothing changes).
    """

    follow: CrawlRequest | None = None
    ended: bool | None = None


class RecordHandler:
    """Decides what a crawl record asks for and carries it out: a dead letter, a
    duplicate dropped, a join, or one step with its effects."""

    def __init__(
        self,
        settings: Settings,
        crawler: CrawlerSettings,
        *,
        origin: GraphOrigin,
        tokens: PageTokens,
        producer: AsyncProducer,
        store: CrawlStateStore,
        client: GraphClient,
        stats: WorkerStats,
        app_limiter: AppLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.app_limiter = app_limiter
        self.crawler = crawler
        self.origin = origin
        self.tokens = tokens
        self.producer = producer
        self.store = store
        self.client = client
        self.stats = stats
        self.crawl_topic = settings.topic("crawl")
        self.events_topic = settings.topic("events")
        self.fetchers: dict[str, PageFetcher] = {}
        # Which running crawls were cancelled, read for all of them at once (_cancels.py).
        self.cancels = CancelWatch(store, crawler.cancel_check_interval)
        # Names of the users a conversations listing gave (contacts.py), on the same pool.
        self.contacts = ContactStore(store.pool, settings.db_schema)
        # The crawl's state in Postgres and the endings other than by its last step.
        self.effects = CrawlEffects(
            settings,
            tokens=tokens,
            producer=producer,
            store=store,
            stats=stats,
            progress_interval=crawler.progress_interval,
        )

    async def handle(
        self,
        page: str,
        partition: int,
        offset: int | None,
        value: bytes | CrawlRequest | None,
        book: PartitionBook | None,
        *,
        before_fetch: Callable[[], Awaitable[None]],
    ) -> Handled:
        """Handle one record (read from Kafka, or followed when ``offset`` is None) of
        ``partition``, whose ``book`` is None once the partition is gone.

        ``before_fetch`` is awaited before a step fetches anything (see the end of this
        method). Raises what the producer or Postgres raise that is not an outage.
        """
        if isinstance(value, CrawlRequest):
            record = value
        else:
            try:
                record = CrawlRequest.from_bytes(value)
            except PoisonError as e:
                assert offset is not None
                await self.effects.dead_letter(page, partition, offset, value, e)
                return Handled()
        if book is None:
            return Handled()
        decision = decide(book.marks.get(record.page_id), crawl_id=record.crawl_id, seq=record.seq)
        if offset is None and decision != "continue":
            # a followed continuation whose copy was read (and run) first
            return Handled()
        refused = record_refusal(record, self.origin) if decision != "duplicate" else None
        if refused is not None:
            # Poison: dead-lettered, and the crawl it would run fails; nothing is fetched.
            ends = decision in ("start", "continue")
            await self.effects.refuse(
                page, record, book, partition, offset, value, refused, ends=ends
            )
            return Handled(ended=True if ends else None)
        if decision in ("duplicate", "stale"):
            self.stats.duplicates += 1
            log.debug(
                "dropping %s crawl record %s seq %d of page %s",
                decision,
                record.crawl_id,
                record.seq,
                record.page_id,
            )
            return Handled()
        if decision == "join":
            current = book.marks[record.page_id].crawl_id
            if await self._cancelled(current, now=True):
                # The running crawl was cancelled and has not noticed yet: it ends here
                # and this request starts a crawl of its own.
                self.effects.end_cancelled(
                    record.page_id, current, book.marks[record.page_id].seq, book
                )
                decision = "start"
        if decision == "join":
            current = book.marks[record.page_id].crawl_id
            self.stats.joined += 1
            log.info("crawl request %s joins running crawl %s", record.crawl_id, current)
            await self.effects.project(Progress(record, "joined", None, 0, joined=current))
            return Handled()
        if decision == "start":
            if await self._handled_before(record):
                self.stats.duplicates += 1
                log.debug("dropping crawl request %s read again", record.crawl_id)
                return Handled()
            record = await self._prepare(record)
        elif await self._cancelled(record.crawl_id):
            # a continuation of a crawl cancelled meanwhile: nothing more is fetched
            self.effects.end_cancelled(record.page_id, record.crawl_id, record.seq, book)
            return Handled(ended=True)
        # A kill must cost at most the one step in flight. A step that produced a
        # continuation is proven handled by it (see worker._release); one that ended its
        # crawl is proven only by its commit, which the caller awaits here.
        await before_fetch()
        if offset is None:
            self.stats.followed += 1
        nxt = await self._step(record, book)
        return Handled(follow=nxt, ended=nxt is None)

    async def _handled_before(self, record: CrawlRequest) -> bool:
        """Return True if the request ``record`` was handled already (it joined a crawl,
        or its own crawl ended): this is a copy read again.

        The marks cannot tell: once the crawl it joined has finished, the page's mark
        says "finished" and a request after it starts a crawl. A request is read again
        when the committed offset lags behind it (another page's step below it is still
        in flight, e.g. throttled) and the partition moves (a kill, a revoke). Its
        ``crawl_history`` row has left ``queued`` for good by then.
        """
        store = self.store
        status = await until_done("crawl state read", lambda: store.request_status(record.crawl_id))
        return status in ("joined", "done", "failed", "cancelled")

    async def _cancelled(self, crawl_id: str, *, now: bool = False) -> bool:
        """Return True if ``crawl_id`` was cancelled (its history row says so): read now,
        or as of the worker's last read of its running crawls (_cancels.py)."""
        if not now:
            cancels = self.cancels
            return await until_done("crawl state read", lambda: cancels.cancelled(crawl_id))
        store = self.store
        status = await until_done("crawl state read", lambda: store.request_status(crawl_id))
        return status == "cancelled"

    async def _prepare(self, record: CrawlRequest) -> CrawlRequest:
        """Continue the page's failed last crawl from its cursor (resume.py), or fix the
        incremental cutoff of a new crawl from the last completed one."""
        store = self.store
        limit = self.crawler.conversation_failures
        resumed = await until_done(
            "crawl resume",
            lambda: store.resume(
                record,
                conversation_failures=limit,
                refusal=lambda r: record_refusal(r, self.origin),
            ),
        )
        if resumed is not None:
            self.stats.resumed += 1
            if resumed.skipped_thread is not None:
                self.stats.skipped_conversations += 1
                log.warning(
                    "crawl %s of page %s skips conversation %s: reading it failed in %d crawls",
                    record.crawl_id,
                    record.page_id,
                    resumed.skipped_thread,
                    limit,
                )
            log.info(
                "crawl %s of page %s resumes failed crawl %s (attempt %d)",
                record.crawl_id,
                record.page_id,
                resumed.resumed_from,
                resumed.attempt,
            )
            return resumed.record
        if record.full:
            return record
        last = await until_done("crawl state read", lambda: store.last_completed_ms(record.page_id))
        if last is None:
            return record
        since = max(0, last - int(self.crawler.incremental_margin * 1000))
        return record.model_copy(update={"since": since})

    def _fetcher(self, page_id: str, token: PageToken) -> PageFetcher:
        fetcher = self.fetchers.get(page_id)
        if fetcher is None:
            fetcher = PageFetcher(
                self.client,
                page_id=page_id,
                token=token.token.get_secret_value(),
                settings=self.crawler,
                app=self.app_limiter,
            )
            self.fetchers[page_id] = fetcher
        # the token of the last read of the pages table (a new one set through the API)
        fetcher.token = token.token.get_secret_value()
        return fetcher

    async def _token(self, page_id: str) -> PageToken:
        """Return the page's token; raise :class:`CrawlFailedError` if it has none."""
        tokens = self.tokens
        token = await until_done("pages read", lambda: tokens.get(page_id))
        if token is None:
            raise CrawlFailedError(f"no page token configured for page {page_id}")
        return token

    async def _step(self, record: CrawlRequest, book: PartitionBook) -> CrawlRequest | None:
        """Run one step; return the continuation it produced (None: the crawl ended or
        paused)."""
        skipped: str | None = None
        while True:
            try:
                token = await self._token(record.graph_page)
            except CrawlFailedError as e:
                await self.effects.fail(record, book, str(e))
                return None
            try:
                _check_usable(token)
                outcome = await self._run_step(record, token)
                break
            except PageTokenError as e:
                if record.page_id != record.graph_page:
                    # An Instagram account's crawl: the token is its linked page's, whose
                    # row keeps one paused crawl (the page's own). The page is marked;
                    # this crawl fails with its cursor kept, resumed by the retrier or
                    # the next request once the token works (resume.py).
                    if await self.effects.reject(record, token, e, None) is None:
                        continue
                    await self.effects.fail(record, book, f"page {record.graph_page}: {e.message}")
                    return None
                if await self.effects.pause(record, book, token, e):
                    return None
                # The token was replaced while this step ran: run it with the new one.
            except CrawlFailedError as e:
                skip = resume.skip_failed(record, e)
                if skip is None:
                    await self.effects.fail(record, book, str(e))
                    return None
                # one conversation Meta cannot read: skipped and counted, the crawl goes on
                outcome, skipped = skip
                self.stats.skipped_conversations += 1
                log.warning(
                    "crawl %s of page %s skips conversation %s: %s",
                    record.crawl_id,
                    record.page_id,
                    skipped,
                    e,
                )
                break
        await self.tokens.worked(record.graph_page)
        key = record.page_id.encode()
        # 1. the step's events, confirmed by Kafka (acks=all)
        await self.producer.send_batch(
            self.events_topic, ((key, env.to_bytes()) for env in outcome.envelopes)
        )
        # 1b. the names the listing gave (an idempotent upsert: a step run again writes
        #     the same rows)
        if outcome.contacts:
            contacts = self.contacts
            await until_done("contacts write", lambda: contacts.from_participants(outcome.contacts))
        # 2. the continuation, confirmed, so a crash after this resumes from it
        nxt = None
        if not outcome.done:
            nxt = record.model_copy(update={"seq": record.seq + 1, "step": outcome.step})
            await self.producer.send_batch(self.crawl_topic, [(key, nxt.to_bytes())])
        # 3. the mark of a step that did not end its crawl, so a re-delivered copy of
        #    this record is a duplicate; the offset and the mark are committed together
        #    by the worker once this returns (or by a revoke or shutdown meanwhile)
        if not outcome.done:
            book.set_mark(record.page_id, Mark(record.crawl_id, record.seq, False))
        self.stats.steps += 1
        status: Status = "done" if outcome.done else "running"
        if outcome.done:
            self.stats.done += 1
            log.info(
                "crawl %s of page %s done: %d messages, %d calls",
                record.crawl_id,
                record.page_id,
                outcome.step.counters.messages,
                outcome.step.counters.api_calls,
            )
        progress = Progress(
            record,
            status,
            outcome.step,
            record.seq + 1,
            finished_ms=now_ms() if outcome.done else None,
            skipped_thread=skipped,
        )
        # A crawl's start, end and skips are written now; the progress of a running
        # crawl goes with the next flush of all pages' (_progress.py).
        first = record.page_id not in self.effects.projected
        if outcome.done or record.seq == 0 or skipped is not None or first:
            self.effects.projected.add(record.page_id)
            await self.effects.project(progress)
        else:
            await self.effects.progress.offer(progress)
        # 4. the finished mark of a step that ended its crawl, only once "done" is in
        #    Postgres: nothing writes "done" after the mark is committed (a copy read
        #    again is a duplicate), so a step that dies in the write (Postgres down,
        #    cancelled by a stop or a revoke) must stay unhandled and run again
        if outcome.done:
            book.set_mark(record.page_id, Mark(record.crawl_id, record.seq, True))
            self.effects.projected.discard(record.page_id)
        return nxt

    async def _run_step(self, record: CrawlRequest, token: PageToken) -> StepOutcome:
        # An Instagram account's calls go through its linked page: that page's token
        # and pace (Graph counts them against the page).
        fetch = self._fetcher(record.graph_page, token)
        attempts = 0
        while True:
            try:
                return await run_step(
                    record,
                    fetch=fetch,
                    origin=self.origin,
                    conversations_limit=self.crawler.conversations_limit,
                    messages_limit=self.crawler.messages_limit,
                )
            except RetryableError as e:
                attempts += 1
                if attempts >= self.crawler.max_attempts:
                    raise CrawlFailedError(f"gave up after {attempts} bad responses: {e}") from e
                await asyncio.sleep(
                    backoff(attempts, base=self.crawler.backoff_base, cap=self.crawler.backoff_max)
                )


def _check_usable(token: PageToken) -> None:
    """Raise :class:`PageTokenError` for a token known not to work (nothing is sent to
    Graph with it)."""
    if token.status != "active":
        message = token.status_message or f"the page is {token.status}"
        raise PageTokenError(f"page is {token.status}", message=message)
