"""The crawler worker: a consumer group on ``<prefix>.crawl``, its rebalances and commits.

The worker owns the consumer (polled in a thread of its own), the partition books
(offsets in flight and page marks, ``_offsets.py``) and the commits; it hands each
record to the page runners (``_pages.py``), which run it through the record handler
(``_handler.py``: the step and its effects).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import SecretStr

from convsync.aproducer import AsyncProducer
from convsync.errors import ConsumerFatalError, ConvsyncError, PoisonError
from convsync.kafka import is_fatal, make_consumer, make_producer, read_watermarks
from convsync.pages import TokenCipher
from convsync.settings import Settings
from producers.crawler._commits import CommitQueue, in_thread, take
from producers.crawler._effects import WorkerStats
from producers.crawler._handler import RecordHandler
from producers.crawler._offsets import PartitionBook, Seen, resume_marks
from producers.crawler._pages import PageRunners
from producers.crawler.app_usage import AppLimiter
from producers.crawler.config import CrawlerSettings
from producers.crawler.graph import GraphClient
from producers.crawler.state import CrawlStateStore, make_pool
from producers.crawler.step import record_refusal
from producers.crawler.tokens import PageTokens
from producers.crawler.urls import GraphOrigin
from schemas.crawl import CrawlRequest

log = logging.getLogger(__name__)

# While a step runs the poll thread polls this briefly, so that the step's commit is
# issued at once (a consumer cannot be woken from a poll).
POLL_BUSY = 0.002


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
        app_limiter: AppLimiter | None = None,
    ) -> None:
        self.settings = settings
        # The app-wide limit (X-App-Usage), shared through Postgres with other workers.
        self.app_limiter = app_limiter or AppLimiter(crawler)
        self.crawler = crawler
        self.graph_url = graph_url or settings.graph_url
        # The one origin page tokens go to (ConfigError at once for an unusable URL).
        self.origin = GraphOrigin(self.graph_url)
        # The initial set, added to the pages table where a page is not in it yet; the
        # tokens used are the table's (producers/crawler/tokens.py).
        self.tokens = page_tokens if page_tokens is not None else settings.page_tokens
        # ConfigError at once without CONVSYNC_SECRET_KEY: the table's tokens need it.
        self.cipher = TokenCipher(settings.secret_key)
        self.page_tokens: PageTokens | None = None
        self.crawl_topic = settings.topic("crawl")
        self.stats = WorkerStats()
        # Set up by run(): the record handler and the page runners.
        self.handler: RecordHandler | None = None
        self.pages: PageRunners | None = None
        self._books: dict[int, PartitionBook] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._commits = CommitQueue()
        self._stopping = False
        self._loop_lock = threading.Lock()
        self.closed_cleanly = True
        self._fatal: BaseException | None = None
        self._consumer: Consumer | None = None
        self._producer: AsyncProducer | None = None

    @property
    def needing_reconnect(self) -> int | None:
        """Return how many pages need a new token (None: the pages are not read yet)."""
        return None if self.page_tokens is None else self.page_tokens.needing_reconnect

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
        producer = make_producer(self.settings, **{"linger.ms": 1})
        self._producer = AsyncProducer(producer, name="crawler-acks")
        self._producer.start()
        page_tokens = self.page_tokens = PageTokens(
            pool,
            self.settings.db_schema,
            self.cipher,
            refresh=self.crawler.token_refresh,
            initial=self.tokens,
        )
        self.handler = RecordHandler(
            self.settings,
            self.crawler,
            origin=self.origin,
            tokens=page_tokens,
            producer=self._producer,
            store=CrawlStateStore(pool, self.settings.db_schema),
            client=GraphClient(
                session, self.origin, app_secret=self.settings.app_secret.get_secret_value()
            ),
            stats=self.stats,
            app_limiter=self.app_limiter,
        )
        pages = self.pages = PageRunners(
            self.handler,
            self._books,
            slots=self.crawler.max_pages_in_flight,
            commit=self._commit_soon,
            on_fatal=self._set_fatal,
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
        app_sync = asyncio.create_task(
            self.app_limiter.sync_forever(
                pool, self.settings.db_schema, self.crawler.app_usage_sync
            ),
            name="crawler-app-usage",
        )
        resumer = asyncio.create_task(
            page_tokens.resume_forever(self._producer, self.crawl_topic), name="crawler-pages"
        )
        progress = self.handler.effects.progress
        flusher = asyncio.create_task(progress.run_forever(), name="crawler-progress")
        watcher = asyncio.create_task(self.handler.cancels.run_forever(), name="crawler-cancels")
        try:
            while self._fatal is None:
                if stop.is_set():
                    if grace_until is None:
                        # No new step starts; the steps in flight get a grace period to
                        # finish (the poll thread keeps issuing their commits).
                        self._stopping = pages.stopping = True
                        grace_until = time.monotonic() + self.crawler.stop_grace
                        log.info("stopping: finishing the steps in flight")
                    if not pages.busy() or time.monotonic() >= grace_until:
                        break
                msgs = await loop.run_in_executor(polling, self._take, consumer)
                if not self._stopping:
                    for msg in msgs:
                        self._dispatch(msg)
        finally:
            app_sync.cancel()
            resumer.cancel()
            flusher.cancel()
            watcher.cancel()
            await self._shut_down(loop, polling, consumer, pages)
            # the last running progress, if Postgres takes it (it is only progress)
            with contextlib.suppress(ConvsyncError):
                await progress.flush()
            await session.close()
            await pool.close(timeout=self.crawler.close_timeout)
        if self._fatal is not None:
            raise self._fatal

    def _set_fatal(self, error: BaseException) -> None:
        self._fatal = error

    async def _shut_down(
        self,
        loop: asyncio.AbstractEventLoop,
        polling: ThreadPoolExecutor,
        consumer: Consumer,
        pages: PageRunners,
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
        await pages.abandon()
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
            self._commits.discard(tp.partition)
            self._commits.release(tp.partition, None)
            if self.pages is not None:
                self.pages.drop(tp.partition)
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
        assert self.pages is not None
        self.pages.put(partition, offset, page, value)

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
        busy = self.pages is not None and self.pages.busy()
        return take(consumer, POLL_BUSY if busy else 0.05)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Runs on the poll thread.
        self._commits.answered()
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
