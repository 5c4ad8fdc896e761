"""The crawler worker: a consumer group on ``<prefix>.crawl`` running one step per record."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import SecretStr

from convsync.errors import ConsumerFatalError, PoisonError, RetryableError
from convsync.kafka import is_fatal, make_consumer, make_producer, read_watermarks
from convsync.settings import Settings
from producers.crawler._commits import CommitQueue, in_thread, take
from producers.crawler._offsets import Mark, PartitionBook, Seen, decide, resume_marks
from producers.crawler._producer import AsyncProducer
from producers.crawler.config import CrawlerSettings
from producers.crawler.exceptions import CrawlFailedError, ForeignUrlError
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import GraphClient, backoff
from producers.crawler.state import CrawlStateStore, Progress, Status, make_pool
from producers.crawler.step import StepOutcome, record_refusal, run_step
from producers.crawler.urls import GraphOrigin
from schemas.crawl import CrawlRequest
from schemas.records import dead_letter

log = logging.getLogger(__name__)

T = TypeVar("T")

# While a step runs the poll thread polls this briefly, so that the step's commit is
# issued at once (a consumer cannot be woken from a poll).
POLL_BUSY = 0.002


@dataclass(slots=True)
class _PageRunner:
    partition: int
    queue: asyncio.Queue[tuple[int, int, bytes | None]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    commit: asyncio.Future[None] | None = None
    # True while a step runs (a stop waits for it, a little).
    busy: bool = False
    # The last step ended its crawl: only its commit proves it handled.
    unproven: bool = False


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


class CrawlWorker:
    """Consumes crawl records and runs their steps; pages run concurrently, steps of one
    page strictly one after another (the partition's owner is the page's only crawler)."""

    def __init__(
        self,
        settings: Settings,
        crawler: CrawlerSettings,
        *,
        graph_url: str | None = None,
        page_tokens: dict[str, SecretStr] | None = None,
    ) -> None:
        self.settings = settings
        self.crawler = crawler
        self.graph_url = graph_url or settings.graph_url
        # The one origin page tokens go to (ConfigError at once for an unusable URL).
        self.origin = GraphOrigin(self.graph_url)
        self.tokens = page_tokens if page_tokens is not None else settings.page_tokens
        self.crawl_topic = settings.topic("crawl")
        self.events_topic = settings.topic("events")
        self.stats = WorkerStats()
        self._books: dict[int, PartitionBook] = {}
        self._runners: dict[str, _PageRunner] = {}
        self._fetchers: dict[str, PageFetcher] = {}
        self._projected_at: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._commits = CommitQueue()
        self._stopping = False
        self._loop_lock = threading.Lock()
        self.closed_cleanly = True
        self._fatal: BaseException | None = None
        self._slots = asyncio.Semaphore(crawler.max_pages_in_flight)
        self._consumer: Consumer | None = None
        self._producer: AsyncProducer | None = None
        self._store: CrawlStateStore | None = None
        self._client: GraphClient | None = None

    @property
    def assigned_partitions(self) -> int:
        """Return how many crawl partitions this worker owns now."""
        return len(self._books)

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and crawl until ``stop`` is set; raise if a page task failed fatally."""
        pool = make_pool(
            self.settings.database_url.get_secret_value(), size=self.crawler.db_connections
        )
        # Connecting goes on in the background: Postgres down at start is an outage like
        # any other, waited out by the first step that needs it.
        await pool.open(wait=False)
        timeout = aiohttp.ClientTimeout(total=self.crawler.request_timeout)
        session = aiohttp.ClientSession(timeout=timeout)
        # linger 1 ms: a step waits for its acks, so batching longer only adds latency.
        self._producer = AsyncProducer(make_producer(self.settings, **{"linger.ms": 1}))
        self._producer.start()
        self._store = CrawlStateStore(pool, self.settings.db_schema)
        self._client = GraphClient(
            session, self.origin, app_secret=self.settings.app_secret.get_secret_value()
        )
        overrides: dict[str, Any] = {
            "session.timeout.ms": int(self.crawler.session_timeout * 1000),
            "on_commit": self._on_commit,
        }
        if self.crawler.instance_id:
            overrides["group.instance.id"] = self.crawler.instance_id
        consumer = make_consumer(self.settings, self.crawler.group, **overrides)
        self._consumer = consumer
        consumer.subscribe(
            [self.crawl_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("crawler consuming %s as group %s", self.crawl_topic, self.crawler.group)
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        # consume() blocks in a thread of its own (no busy polling on the loop); the
        # rebalance callbacks it runs are marshalled back onto the loop.
        polling = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crawler-poll")
        grace_until: float | None = None
        try:
            while self._fatal is None:
                if stop.is_set():
                    if grace_until is None:
                        # No new step starts; the steps in flight get a grace period to
                        # finish (the poll thread keeps issuing their commits).
                        self._stopping = True
                        grace_until = time.monotonic() + self.crawler.stop_grace
                        log.info("stopping: finishing the steps in flight")
                    busy = any(r.busy for r in self._runners.values())
                    if not busy or time.monotonic() >= grace_until:
                        break
                msgs = await loop.run_in_executor(polling, self._take, consumer)
                if not self._stopping:
                    for msg in msgs:
                        self._dispatch(msg)
        finally:
            await self._shut_down(loop, polling, consumer)
            await session.close()
            await pool.close(timeout=self.crawler.close_timeout)
        if self._fatal is not None:
            raise self._fatal

    async def _shut_down(
        self, loop: asyncio.AbstractEventLoop, polling: ThreadPoolExecutor, consumer: Consumer
    ) -> None:
        """Abandon the steps still in flight, commit, close; every wait is bounded.

        An abandoned step is safe: its record is not committed, so the next owner runs
        it again (that Graph page is fetched twice, its events are produced again with
        the same ids). A consumer's close() waits for a rebalance in progress to end,
        which the broker may hold for a dead member's whole session: that wait is
        abandoned after ``close_timeout`` (the group then expires this member).
        """
        bound = self.crawler.close_timeout
        started = time.monotonic()
        # 1. the poll thread (waited off the loop: a rebalance callback on it may be
        #    waiting for the loop right now)
        if not await in_thread(functools.partial(polling.shutdown, wait=True), bound):
            log.warning("the consumer is stuck in a poll; not closing it")
            self.closed_cleanly = False
        # 2. the page tasks: whatever is still running is abandoned
        for runner in list(self._runners.values()):
            if runner.task is not None:
                runner.task.cancel()
        await asyncio.gather(
            *(r.task for r in self._runners.values() if r.task is not None),
            return_exceptions=True,
        )
        # 3. the offsets and marks of what finished, then leave the group, in a thread
        #    of its own so that a blocked close cannot hold the process
        if self.closed_cleanly:
            final = self._final_offsets()

            def close() -> None:
                if final:
                    try:
                        consumer.commit(offsets=final, asynchronous=False)
                    except KafkaException as e:
                        log.warning("final commit of crawl partitions failed: %s", e)
                consumer.close()

            if not await in_thread(close, bound):
                log.warning("consumer close still waiting after %.1fs; abandoned", bound)
                self.closed_cleanly = False
        # 4. records produced by abandoned steps: delivered or not, they are not needed
        assert self._producer is not None
        await self._producer.close(flush_seconds=bound)
        with self._loop_lock:
            self._loop = None
        log.info(
            "crawler stopped in %.2fs (%s)",
            time.monotonic() - started,
            "clean" if self.closed_cleanly else "consumer abandoned",
        )

    # -- rebalancing -----------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop thread and wait for it (callbacks come from the
        poll thread, or from the loop itself when ``close()`` revokes)."""
        with self._loop_lock:
            loop = self._loop
            if loop is None or threading.get_ident() == self._loop_thread:
                # no loop (any more: a close() abandoned at shutdown finishing late)
                fn()
                return

            async def call() -> None:
                fn()

            done = asyncio.run_coroutine_threadsafe(call(), loop)
        done.result()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The marks committed with each offset say which steps are already handled; the
        # records between the offset and the end of the log may prove more (see _release).
        committed = consumer.committed(partitions, timeout=30)
        ends: dict[int, int | None] = {}
        for tp in committed:
            try:
                low, high = read_watermarks(
                    consumer, TopicPartition(tp.topic, tp.partition), timeout=10
                )
            except KafkaException as e:
                # Without the end offset the committed marks alone decide: nothing is
                # lost or doubled, but a kill may then cost more than one page fetched.
                log.warning("no end offset of crawl partition %d: %s", tp.partition, e)
                ends[tp.partition] = None
                continue
            start = tp.offset if tp.offset >= 0 else low
            ends[tp.partition] = high if high > start else None

        def assign() -> None:
            for tp in committed:
                self._books[tp.partition] = PartitionBook(
                    marks=PartitionBook.parse_marks(tp.metadata), replay_end=ends[tp.partition]
                )

        self._on_loop(assign)
        log.info("assigned crawl partitions %s", sorted(tp.partition for tp in partitions))

    def _drop(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Forget ``partitions`` (cancel their pages); return what to commit for them."""
        out = []
        for tp in partitions:
            book = self._books.pop(tp.partition, None)
            offset = book.commit_offset() if book is not None else None
            if book is not None and offset is not None and book.dirty:
                out.append(TopicPartition(self.crawl_topic, tp.partition, offset, book.metadata()))
            self._commits.release(tp.partition, None)
            for page, runner in list(self._runners.items()):
                if runner.partition == tp.partition:
                    if runner.task is not None:
                        runner.task.cancel()
                    del self._runners[page]
        return out

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        final: list[TopicPartition] = []
        self._on_loop(lambda: final.extend(self._drop(partitions)))
        if final:
            try:
                consumer.commit(offsets=final, asynchronous=False)
            except KafkaException as e:
                log.warning("final commit of revoked crawl partitions failed: %s", e)
        log.info("revoked crawl partitions %s", sorted(tp.partition for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        def drop() -> None:
            self._drop(partitions)

        self._on_loop(drop)
        log.warning("lost crawl partitions %s", sorted(tp.partition for tp in partitions))

    # -- dispatch and commit ---------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if is_fatal(err):
                # The loop ends, the steps in flight are abandoned (not committed: the
                # next owner runs them again) and run() raises this.
                log.error("crawl consumer failed fatally: %s", err)
                if self._fatal is None:
                    self._fatal = ConsumerFatalError(f"crawl consumer failed fatally: {err}")
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("crawl consumer error: %s", err)
            return
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        book = self._books.setdefault(partition, PartitionBook())
        book.begin(offset)
        key = msg.key()
        page = key.decode("utf-8", "replace") if key else ""
        if book.replay_end is not None:
            book.held.append((offset, page, msg.value()))
            if offset + 1 >= book.replay_end:
                self._release(partition, book)
            return
        self._run_record(partition, offset, page, msg.value())

    def _release(self, partition: int, book: PartitionBook) -> None:
        """Raise the marks with what the held records prove, then run them in order."""
        seen = []
        for offset, _, value in book.held:
            try:
                record = CrawlRequest.from_bytes(value)
            except PoisonError:
                continue  # dead-lettered when it is run
            if record_refusal(record, self.origin) is not None:
                # Poison too, and no worker writes one: it proves no step handled (else a
                # forged step would pass for the page's running crawl, and a real request
                # would join it and never run).
                continue
            seen.append(Seen(offset, record.page_id, record.crawl_id, record.seq))
        book.marks = resume_marks(book.marks, seen)
        held, book.held, book.replay_end = book.held, [], None
        log.info("crawl partition %d: %d records read back to resume", partition, len(held))
        for offset, page, value in held:
            self._run_record(partition, offset, page, value)

    def _run_record(self, partition: int, offset: int, page: str, value: bytes | None) -> None:
        runner = self._runners.get(page)
        if runner is None or runner.partition != partition:
            runner = _PageRunner(partition)
            runner.task = asyncio.get_running_loop().create_task(self._page_loop(page, runner))
            self._runners[page] = runner
        runner.queue.put_nowait((partition, offset, value))

    def _final_offsets(self) -> list[TopicPartition]:
        """Return the offset and marks to commit for every owned partition."""
        out = []
        for partition, book in self._books.items():
            offset = book.commit_offset()
            if offset is not None:
                out.append(TopicPartition(self.crawl_topic, partition, offset, book.metadata()))
        return out

    def _commit_soon(self, partition: int) -> asyncio.Future[None]:
        """Commit ``partition`` asynchronously; the future resolves when Kafka answered."""
        book = self._books.get(partition)
        offset = book.commit_offset() if book is not None else None
        if book is None or offset is None or self._consumer is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        book.dirty = False
        return self._commits.put(
            TopicPartition(self.crawl_topic, partition, offset, book.metadata())
        )

    def _commit_failed(self, partition: int) -> None:
        book = self._books.get(partition)
        if book is not None:
            book.dirty = True
        self._commits.release(partition, None)

    def _take(self, consumer: Consumer) -> list[Message]:
        """Issue queued commits, then return what is ready (poll thread only)."""
        for partition in self._commits.issue(consumer):
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._commit_failed, partition)
        busy = any(r.busy for r in list(self._runners.values()))
        return take(consumer, POLL_BUSY if busy else 0.05)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Runs on the poll thread.
        if self._loop is None:
            return
        for tp in partitions:
            failed = err is not None or tp.error is not None
            upto = None if failed else (tp.offset, tp.metadata or "")
            if failed:
                log.warning(
                    "commit of crawl partition %d failed: %s", tp.partition, err or tp.error
                )
            self._loop.call_soon_threadsafe(self._commits.release, tp.partition, upto)

    async def _page_loop(self, page: str, runner: _PageRunner) -> None:
        # The continuation this page's last step produced. While this worker still owns
        # the partition it runs it at once instead of waiting to read it back from Kafka;
        # the copy read back later is then a duplicate by the marks. Records already read
        # for the page go first, in partition order (a second request must find the
        # crawl running and join it).
        follow: CrawlRequest | None = None
        while True:
            if self._stopping:
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
                    nxt = await self._handle(page, runner, partition, offset, value)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                log.exception("crawler page task for %s failed; stopping the worker", page)
                self._fatal = e
                runner.busy = False
                raise
            if nxt is not None or value is follow:
                follow = nxt
            book = self._books.get(partition)
            if book is not None:
                if offset is None:
                    book.dirty = True
                else:
                    book.finish(offset)
                runner.commit = self._commit_soon(partition)
            runner.busy = False

    async def _retire(self, page: str, runner: _PageRunner) -> None:
        """Forget an idle ``runner``; first wait for the commit that proves its last step
        handled, if that step ended its crawl (see _handle: a new runner of the page
        would not know to wait)."""
        if runner.unproven and runner.commit is not None:
            await self._proven(runner)
            runner.unproven = False
        if runner.queue.empty() and self._runners.get(page) is runner:
            del self._runners[page]

    async def _proven(self, runner: _PageRunner) -> None:
        assert runner.commit is not None
        try:
            await asyncio.wait_for(asyncio.shield(runner.commit), 10)
        except TimeoutError:
            log.warning("no answer to a commit of crawl partition %d in 10s", runner.partition)

    def _may_follow(self, page: str, runner: _PageRunner) -> bool:
        """Return True if ``runner`` may run its page's continuation without reading it."""
        return (
            not self._stopping
            and self._runners.get(page) is runner
            and runner.partition in self._books
        )

    # -- one record ------------------------------------------------------------------

    async def _handle(
        self,
        page: str,
        runner: _PageRunner,
        partition: int,
        offset: int | None,
        value: bytes | CrawlRequest | None,
    ) -> CrawlRequest | None:
        """Handle one record (read from Kafka, or followed when ``offset`` is None);
        return the continuation it produced, if any."""
        if isinstance(value, CrawlRequest):
            record = value
        else:
            try:
                record = CrawlRequest.from_bytes(value)
            except PoisonError as e:
                assert offset is not None
                await self._dead_letter(page, partition, offset, value, e)
                return None
        book = self._books.get(partition)
        if book is None:
            return None
        decision = decide(book.marks.get(record.page_id), crawl_id=record.crawl_id, seq=record.seq)
        if offset is None and decision != "continue":
            # a followed continuation whose copy was read (and run) first
            return None
        refused = record_refusal(record, self.origin) if decision != "duplicate" else None
        if refused is not None:
            # Poison: dead-lettered, and the crawl it would run fails; nothing is fetched.
            ends = decision in ("start", "continue")
            await self._refuse(page, record, book, partition, offset, value, refused, ends=ends)
            runner.unproven = runner.unproven or ends
            return None
        if decision in ("duplicate", "stale"):
            self.stats.duplicates += 1
            log.debug(
                "dropping %s crawl record %s seq %d of page %s",
                decision,
                record.crawl_id,
                record.seq,
                record.page_id,
            )
            return None
        if decision == "join":
            current = book.marks[record.page_id].crawl_id
            self.stats.joined += 1
            log.info("crawl request %s joins running crawl %s", record.crawl_id, current)
            await self._project(Progress(record, "joined", None, 0, joined=current))
            return None
        if decision == "start":
            record = await self._prepare(record)
        # A kill must cost at most the one step in flight. A step that produced a
        # continuation is proven handled by it (see _release); one that ended its crawl
        # is proven only by its commit, so that commit must be durable before this
        # step fetches.
        if runner.unproven and runner.commit is not None:
            await self._proven(runner)
        if offset is None:
            self.stats.followed += 1
        nxt = await self._step(record, book)
        runner.unproven = nxt is None
        return nxt

    async def _prepare(self, record: CrawlRequest) -> CrawlRequest:
        """Fix the incremental cutoff of a new crawl from the last completed one."""
        if record.full:
            return record
        store = self._store
        assert store is not None
        last = await self._until_done(
            "crawl state read", lambda: store.last_completed_ms(record.page_id)
        )
        if last is None:
            return record
        since = max(0, last - int(self.crawler.incremental_margin * 1000))
        return record.model_copy(update={"since": since})

    def _fetcher(self, page_id: str) -> PageFetcher:
        fetcher = self._fetchers.get(page_id)
        if fetcher is None:
            token = self.tokens.get(page_id)
            if token is None:
                raise CrawlFailedError(f"no page token configured for page {page_id}")
            assert self._client is not None
            fetcher = PageFetcher(
                self._client,
                page_id=page_id,
                token=token.get_secret_value(),
                settings=self.crawler,
            )
            self._fetchers[page_id] = fetcher
        return fetcher

    async def _step(self, record: CrawlRequest, book: PartitionBook) -> CrawlRequest | None:
        """Run one step; return the continuation it produced (None: the crawl ended)."""
        assert self._producer is not None and self._client is not None
        try:
            outcome = await self._run_step(record)
        except CrawlFailedError as e:
            await self._fail(record, book, str(e))
            return None
        key = record.page_id.encode()
        # 1. the step's events, confirmed by Kafka (acks=all)
        await self._producer.send_batch(
            self.events_topic, ((key, env.to_bytes()) for env in outcome.envelopes)
        )
        # 2. the continuation, confirmed, so a crash after this resumes from it
        nxt = None
        if not outcome.done:
            nxt = record.model_copy(update={"seq": record.seq + 1, "step": outcome.step})
            await self._producer.send_batch(self.crawl_topic, [(key, nxt.to_bytes())])
        # 3. the mark of a step that did not end its crawl, so a re-delivered copy of
        #    this record is a duplicate; the offset and the mark are committed together
        #    by the caller once this returns (or by a revoke or shutdown meanwhile)
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
        now = time.monotonic()
        last = self._projected_at.get(record.page_id)
        due = (
            outcome.done
            or record.seq == 0
            or last is None
            or now - last >= self.crawler.progress_interval
        )
        if due:
            self._projected_at[record.page_id] = now
            await self._project(
                Progress(
                    record,
                    status,
                    outcome.step,
                    record.seq + 1,
                    finished_ms=_now_ms() if outcome.done else None,
                )
            )
        # 4. the finished mark of a step that ended its crawl, only once "done" is in
        #    Postgres: nothing writes "done" after the mark is committed (a copy read
        #    again is a duplicate), so a step that dies in the write (Postgres down,
        #    cancelled by a stop or a revoke) must stay unhandled and run again
        if outcome.done:
            book.set_mark(record.page_id, Mark(record.crawl_id, record.seq, True))
            self._projected_at.pop(record.page_id, None)
        return nxt

    async def _fail(self, record: CrawlRequest, book: PartitionBook, reason: str) -> None:
        """Write the crawl of ``record`` as failed with ``reason``, then its finished mark."""
        self.stats.failed += 1
        log.error("crawl %s of page %s failed: %s", record.crawl_id, record.page_id, reason)
        # The finished mark only after "failed" is in Postgres (see step 4 of _step).
        await self._project(
            Progress(
                record, "failed", record.step, record.seq + 1, error=reason, finished_ms=_now_ms()
            )
        )
        book.set_mark(record.page_id, Mark(record.crawl_id, record.seq, True))
        self._projected_at.pop(record.page_id, None)

    async def _refuse(
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
            await self._dead_letter(page, partition, offset, raw, ForeignUrlError(text))
        if ends:
            await self._fail(record, book, text)

    async def _run_step(self, record: CrawlRequest) -> StepOutcome:
        assert self._client is not None
        fetch = self._fetcher(record.page_id)
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

    async def _project(self, progress: Progress) -> None:
        store = self._store
        assert store is not None
        await self._until_done("crawl state write", lambda: store.project(progress))

    async def _until_done(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
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

    async def _dead_letter(
        self, page: str, partition: int, offset: int, value: bytes | None, error: PoisonError
    ) -> None:
        assert self._producer is not None
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
            failed_at=_now_ms(),
        )
        await self._producer.send_batch(
            self.settings.topic("dlq"), [(letter.key, letter.value)], headers=list(letter.headers)
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_worker(settings: Settings, crawler: CrawlerSettings, **kwargs: Any) -> None:
    """Run a worker until SIGINT/SIGTERM (the ``convsync crawler`` command)."""
    import signal

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        clean = True
        while True:
            worker = CrawlWorker(settings, crawler, **kwargs)
            try:
                await worker.run(stop)
            except ConsumerFatalError as e:
                # An abandoned close of the dead consumer would block the exit later.
                clean = clean and worker.closed_cleanly
                if stop.is_set():
                    return clean
                # A fenced or otherwise dead consumer: what it had not committed is run
                # again by the next owner, which is most likely this process again.
                log.warning("%s; rejoining the group with a new consumer in %.0fs", e, 1.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            return clean and worker.closed_cleanly

    if not asyncio.run(main()):
        # A consumer whose close() was abandoned would block the interpreter's exit in
        # librdkafka's destructor; everything durable is already durable.
        logging.shutdown()
        os._exit(0)
