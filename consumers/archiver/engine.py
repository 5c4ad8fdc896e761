"""The archiver: holds the schema's lock, reads the events topic, downloads what is due.

One run: 1. wait for the schema's archiver lock (another archiver has it: stand by);
2. release the claims of a killed run and delete its temp files; 3. read the events
topic into ``attachment_files`` while 4. up to ``concurrency`` downloads take due rows.
A lost lock or an unreachable Postgres/Kafka ends the active session; the run starts
over at 1. after a pause, from what Postgres holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from psycopg_pool import ConnectionPool

from consumers.archiver import metrics
from consumers.archiver.discovery import DEFAULT_GROUP, Discovery
from consumers.archiver.exceptions import FetchError
from consumers.archiver.fetch import Fetcher
from consumers.archiver.queue import ArchiveQueue, Conn, FileInfo, Job
from consumers.archiver.settings import ArchiverSettings
from consumers.archiver.storage import MediaStore, StoredFile
from convsync.errors import ConfigError, RetryableError
from convsync.settings import Settings

log = logging.getLogger(__name__)

Outcome = tuple[StoredFile, str | None] | FetchError
LEAD_CHECK_SECONDS: Final = 5.0
DEPTH_SECONDS: Final = 5.0
STANDBY_SECONDS: Final = 5.0


def redact(url: str | None) -> str:
    """Return ``url`` without its query (CDN URLs carry signatures) for logs."""
    if not url:
        return "-"
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]  # never a userinfo's password
    return f"{parts.scheme}://{host}{parts.path[:80]}"


@dataclass
class Totals:
    """What a run did."""

    downloaded: int = 0
    reused: int = 0
    failed: int = 0
    retried: int = 0
    files_new: int = 0
    bytes_new: int = 0
    sessions: int = 0


class Archiver:
    """The media archiver of one schema, for :meth:`run` in an event loop."""

    def __init__(
        self,
        settings: Settings,
        media: ArchiverSettings,
        *,
        group: str = DEFAULT_GROUP,
        drain: bool = False,
        serve_metrics: bool = True,
    ) -> None:
        if media.dir is None:
            raise ConfigError("CONVSYNC_MEDIA_DIR is not set: the archiver has nowhere to store")
        self.settings = settings
        self.media = media
        self.group = group
        self.drain = drain
        self.serve_metrics = serve_metrics
        self.store = MediaStore(media.dir)
        self.health = metrics.Health()
        self.totals = Totals()
        self._pool = ConnectionPool(
            settings.database_url.get_secret_value(),
            # The lock's connection, the reader's, and one per download at most.
            min_size=2,
            max_size=2 + media.concurrency,
            kwargs={
                "application_name": "convsync-archiver",
                "autocommit": True,
                # Every call bounded; a dead server (or its host) noticed within ~25 s
                # on the lock's otherwise idle connection.
                "connect_timeout": 5,
                "options": "-c statement_timeout=60000",
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
            open=False,
            timeout=10,
        )
        self.queue = ArchiveQueue(self._pool, settings.db_schema)
        self._fetching: dict[str, asyncio.Task[Outcome]] = {}

    async def run(self, stop: asyncio.Event) -> Totals:
        """Archive until ``stop`` is set (or, with ``drain``, until nothing is left)."""
        self.store.prepare()
        runner = None
        if self.serve_metrics:
            host, port = self.media.metrics_host_port()
            runner = await metrics.serve(self.health, host, port)
        await asyncio.to_thread(self._pool.open, False)
        try:
            pause = 1.0
            while not stop.is_set():
                try:
                    if await self._session(stop):
                        break
                    pause = 1.0
                except RetryableError as e:
                    log.warning("archiver session ended: %s; again in %.0fs", e, pause)
                    await _wait(stop, pause)
                    pause = min(pause * 2, 30.0)
        finally:
            metrics.ACTIVE.set(0)
            await asyncio.to_thread(self._pool.close)
            if runner is not None:
                await runner.cleanup()
        return self.totals

    async def _session(self, stop: asyncio.Event) -> bool:
        """One turn holding the lock (or standing by); return True when drained."""
        lead = self.queue.lead()
        conn = await asyncio.to_thread(lead.__enter__)
        try:
            if conn is None:
                if self.health.role != "standby":
                    log.info("another archiver works on schema %s; standing by", self.queue.schema)
                self.health.beat("standby")
                await _wait(stop, STANDBY_SECONDS)
                return False
            return await self._active(conn, stop)
        finally:
            await asyncio.to_thread(lead.__exit__, None, None, None)

    async def _active(self, conn: Conn, stop: asyncio.Event) -> bool:
        metrics.ACTIVE.set(1)
        self.totals.sessions += 1
        released = await asyncio.to_thread(self.queue.release_claims)
        cleaned = await asyncio.to_thread(self.store.clean_partials)
        log.info(
            "archiving schema %s into %s (released %s claims, removed %s temp files)",
            self.queue.schema,
            self.media.dir,
            released,
            cleaned,
        )
        discovery = Discovery(self.settings, self.queue, group=self.group)
        reader = _Reader(discovery, self.media, watch_end=self.drain)
        reader.start()
        try:
            async with Fetcher(self.media, self.store) as fetcher:
                return await self._download(fetcher, conn, reader, stop)
        finally:
            metrics.ACTIVE.set(0)
            await asyncio.to_thread(reader.stop)

    async def _download(
        self, fetcher: Fetcher, conn: Conn, reader: _Reader, stop: asyncio.Event
    ) -> bool:
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        next_check = next_depth = 0.0
        try:
            while not stop.is_set():
                reader.check()
                now = loop.time()
                if now >= next_check:
                    await asyncio.to_thread(self.queue.still_leading, conn)
                    next_check = now + LEAD_CHECK_SECONDS
                pending = -1
                if now >= next_depth:
                    pending, due = await asyncio.to_thread(self.queue.depth)
                    metrics.QUEUE_DEPTH.set(pending)
                    metrics.QUEUE_DUE.set(due)
                    next_depth = now + DEPTH_SECONDS
                self.health.beat("active")
                free = self.media.concurrency - len(running)
                jobs = await asyncio.to_thread(self.queue.claim, free) if free > 0 else []
                for job in jobs:
                    running.add(asyncio.create_task(self._settle(fetcher, job)))
                metrics.IN_FLIGHT.set(len(running))
                if self.drain and not jobs and not running and reader.caught_up:
                    if pending < 0:
                        pending, _ = await asyncio.to_thread(self.queue.depth)
                    if pending == 0:
                        log.info("drained: every attachment read so far is settled")
                        return True
                if running and (free <= 0 or not jobs):
                    done, running = await asyncio.wait(
                        running,
                        timeout=self.media.poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    for task in done:
                        task.result()
                elif not jobs:
                    await _wait(stop, self.media.poll_interval)
            return False
        finally:
            for each in (*running, *self._fetching.values()):
                each.cancel()
            await asyncio.gather(*running, *self._fetching.values(), return_exceptions=True)
            metrics.IN_FLIGHT.set(0)

    async def _settle(self, fetcher: Fetcher, job: Job) -> None:
        """Fetch (or reuse) one claimed row's file and record the outcome."""
        url = job.url
        if url is None:
            await asyncio.to_thread(
                self.queue.mark_failed, job.key, "no_url", "no URL", fetched=False
            )
            return
        known = await asyncio.to_thread(self.queue.stored_by_url, url)
        if known is not None and self.store.has(known.storage_key, known.size):
            await asyncio.to_thread(self.queue.mark_stored, job.key, known, fetched=False)
            metrics.ATTACHMENTS.labels("reused").inc()
            self.totals.reused += 1
            return
        # A download of the URL may have started while we asked; it stays listed until
        # its owner has recorded it, so a row asking between the download's end and
        # that record shares it instead of fetching again.
        task = self._fetching.get(url)
        owner = task is None
        if task is None:
            task = asyncio.create_task(self._fetch(fetcher, url))
            self._fetching[url] = task
        try:
            outcome = await asyncio.shield(task)
            await self._record(job, url, outcome)
        finally:
            if owner and self._fetching.get(url) is task:
                del self._fetching[url]

    async def _fetch(self, fetcher: Fetcher, url: str) -> Outcome:
        metrics.DOWNLOADS.inc()
        try:
            stored, ctype = await fetcher.fetch(url)
        except FetchError as e:
            return e
        if stored.new:
            metrics.FILES_STORED.inc()
            metrics.BYTES_STORED.inc(stored.size)
            self.totals.files_new += 1
            self.totals.bytes_new += stored.size
        return stored, ctype

    async def _record(self, job: Job, url: str, outcome: Outcome) -> None:
        if not isinstance(outcome, FetchError):
            stored, ctype = outcome
            info = FileInfo(stored.sha256, stored.size, stored.key, ctype)
            # The file is on disk (linked, folder fsynced) before the row says so.
            await asyncio.to_thread(self.queue.mark_stored, job.key, info, fetched=True)
            metrics.ATTACHMENTS.labels("downloaded").inc()
            self.totals.downloaded += 1
            return
        tries = job.attempts + 1
        kind = "transient" if outcome.transient else "permanent"
        metrics.ERRORS.labels(outcome.reason, kind).inc()
        if outcome.transient and tries < self.media.max_attempts:
            delay = min(self.media.retry_max, self.media.retry_base * 2 ** (tries - 1))
            delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
            delay = max(delay, outcome.retry_after or 0.0)
            log.info(
                "%s: %s (%s), try %s of %s again in %.1fs",
                redact(url),
                outcome.reason,
                outcome.detail,
                tries,
                self.media.max_attempts,
                delay,
            )
            await asyncio.to_thread(
                self.queue.mark_retry, job.key, outcome.reason, outcome.detail, delay=delay
            )
            self.totals.retried += 1
            return
        detail = outcome.detail
        if outcome.transient:
            detail = f"{detail}; gave up after {tries} tries"
        log.info("%s: %s (%s), final", redact(url), outcome.reason, detail)
        await asyncio.to_thread(
            self.queue.mark_failed, job.key, outcome.reason, detail, fetched=True
        )
        metrics.ATTACHMENTS.labels("failed").inc()
        self.totals.failed += 1


class _Reader:
    """The discovery loop in a thread of its own, which alone touches the consumer (a
    cancelled coroutine cannot stop a consume call half-way; a flag between calls can)."""

    def __init__(self, discovery: Discovery, media: ArchiverSettings, *, watch_end: bool) -> None:
        self.discovery = discovery
        self.media = media
        # Asking the end of every partition costs a request each: only to drain.
        self.watch_end = watch_end
        self.caught_up = False
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archiver-discovery", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def check(self) -> None:
        """Raise what stopped the reader, if anything did."""
        if self.error is not None:
            raise self.error
        if not self._thread.is_alive() and not self._halt.is_set():
            raise RetryableError("the discovery thread ended")

    def stop(self) -> None:
        """Stop after the current step and wait (blocks)."""
        self._halt.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self.discovery.start()
            while not self._halt.is_set():
                if self.discovery.step() == 0:
                    self.caught_up = self.watch_end and self.discovery.caught_up()
                    if self.caught_up or not self.watch_end:
                        self._halt.wait(self.media.poll_interval)
                else:
                    self.caught_up = False
        except BaseException as e:  # noqa: BLE001 - handed to the event loop by check()
            self.error = e
        finally:
            self.discovery.close()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
