"""The automatic retry of failed crawls: bounded attempts, capped jittered backoff.

A crawl that failed keeps its cursor (:mod:`producers.crawler.resume`); this asks for
the page's next crawl, which resumes from it, without anyone asking. It runs in each
``convsync crawler`` process beside the reconciler. Every ``tick`` it looks for pages
whose latest crawl failed, nobody resumed it, its ``attempt`` is below ``attempts``,
and ``finished_at + delay(attempt)`` has passed, where the delay doubles per attempt
from ``base`` up to ``cap`` and is scaled by a jitter in [0.5, 1] fixed per crawl (so
every process and every tick agrees on it, and failures of many pages at once do not
come back at once).

A retry is requested like any other crawl (``request.submit``); before that, under the
page's sync lock (the admin API's, so a sync asked for at the same moment is not
doubled), it checks that no request of the page came after the failed crawl's: if one
did (a person, the reconciler, another process's retry), that one resumes the crawl
and nothing is asked. After ``attempts`` the crawl stays failed, on the dashboard's
list of pages needing attention, until someone asks for a sync (which resumes it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg import sql
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from convsync.errors import ConvsyncError
from convsync.settings import Settings
from producers.crawler.request import new_request, submit
from producers.crawler.state import CONNECT_TIMEOUT, record_queued
from schemas.crawl import CrawlRequest

log = logging.getLogger(__name__)


class RetrySettings(BaseSettings):
    """How failed crawls are retried (env prefix ``CONVSYNC_CRAWL_RETRY_``), seconds."""

    model_config = SettingsConfigDict(
        env_prefix="CONVSYNC_CRAWL_RETRY_", frozen=True, extra="ignore"
    )

    # A failed crawl whose attempt is below this is retried; 1 turns retries off.
    attempts: int = Field(default=5, ge=1)
    base: float = Field(default=60.0, gt=0)
    cap: float = Field(default=3600.0, gt=0)
    tick: float = Field(default=15.0, gt=0)
    max_per_tick: int = Field(default=50, ge=1)


def retry_delay(crawl_id: str, attempt: int, *, base: float, cap: float) -> float:
    """Return how long after failed crawl ``crawl_id`` (its ``attempt``) to retry it."""
    full = min(cap, base * 2.0 ** max(0, attempt - 1))
    frac = zlib.crc32(crawl_id.encode()) / 2**32
    return full * (0.5 + 0.5 * frac)


_FAILED: Final = """
SELECT h.crawl_id, h.page_id, h.attempt, extract(epoch FROM h.finished_at),
       extract(epoch FROM now())
FROM {s}.crawl_state AS st JOIN {s}.crawl_history AS h ON h.crawl_id = st.crawl_id
WHERE st.status = 'failed' AND h.status = 'failed' AND h.resumed_by IS NULL
  AND h.attempt < %s AND h.finished_at IS NOT NULL
ORDER BY h.finished_at LIMIT %s
"""
_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('convsync-admin-sync:' || %s))"
_NEWER: Final = """
SELECT 1 FROM {s}.crawl_history
WHERE page_id = %s AND crawl_id <> %s
  AND requested_at >= (SELECT requested_at FROM {s}.crawl_history WHERE crawl_id = %s)
LIMIT 1
"""


@dataclass
class RetryFigures:
    """What the retrier did since start (for logs and tests)."""

    requested: int = 0
    failures: int = 0


class Retrier:
    """Requests the due retries of failed crawls; see the module docstring."""

    def __init__(self, settings: Settings, options: RetrySettings) -> None:
        self.settings = settings
        self.options = options
        self.figures = RetryFigures()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failed tick is logged, the next one tries again."""
        if self.options.attempts <= 1:
            log.info("automatic crawl retries are off (CONVSYNC_CRAWL_RETRY_ATTEMPTS=1)")
            return
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except (ConvsyncError, psycopg.Error, OSError) as e:
                self.figures.failures += 1
                log.warning("crawl retry tick failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.tick)

    def tick(self) -> list[CrawlRequest]:
        """Request the retries that are due; return their requests (blocking)."""
        o = self.options
        s = sql.Identifier(self.settings.db_schema)
        url = self.settings.database_url.get_secret_value()
        records: list[tuple[CrawlRequest, str, int]] = []
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            rows = conn.execute(
                sql.SQL(_FAILED).format(s=s), (o.attempts, o.max_per_tick)
            ).fetchall()
            for crawl_id, page_id, attempt, finished, now in rows:
                delay = retry_delay(str(crawl_id), int(attempt), base=o.base, cap=o.cap)
                if float(finished) + delay > float(now):
                    continue
                record = new_request(str(page_id), full=False)
                with conn.transaction():
                    conn.execute(_LOCK, (str(page_id),))
                    newer = conn.execute(
                        sql.SQL(_NEWER).format(s=s), (page_id, crawl_id, crawl_id)
                    ).fetchone()
                    if newer is not None:
                        continue
                    record_queued(conn, self.settings.db_schema, record)
                records.append((record, str(crawl_id), int(attempt)))
        if records:
            submit(self.settings, *(r for r, _, _ in records))
            self.figures.requested += len(records)
            for record, failed, attempt in records:
                log.info(
                    "retrying failed crawl %s of page %s (attempt %d of %d) as crawl %s",
                    failed,
                    record.page_id,
                    attempt + 1,
                    o.attempts,
                    record.crawl_id,
                )
        return [r for r, _, _ in records]
