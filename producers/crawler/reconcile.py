"""Reconciliation: an incremental crawl of every active page, every period, unasked.

Meta gives up on a webhook it could not deliver; nothing else would fill that gap. The
reconciler runs in each ``convsync crawler`` process. Every page the page source names
(today the pages with a configured token; a pages table plugs in through
:data:`PageSource`) is due once per ``CONVSYNC_RECONCILE_EVERY``: its first turn falls
at a fixed phase of the period (from a hash of its id, so pages are spread across the
period and a restart does not bunch them), each next turn one period later, jittered.

A due page is crawled through the same path as ``convsync crawl`` (``request.submit``):
a request for a page whose crawl runs joins it and starts nothing. Before that, in one
transaction under a per-page advisory lock, the page's last request of any kind is read
from ``crawl_history``: if one was made less than a period ago (a manual crawl, or the
reconciler of another process that got there first), nothing is requested and the next
turn counts from it. Requests go out at most ``max_per_tick`` at a time, so a crawler
starting with many overdue pages does not burst; the crawls themselves keep to the
page and app rate limits (``graph.PagePacer``, ``app_usage.AppLimiter``).

Instagram accounts named in ``CONVSYNC_RECONCILE_INSTAGRAM`` (a JSON object, account
id -> linked page id) are reconciled like pages, through their linked page, while that
page is one the page source names (it holds the token): their schedule, claim, ages and
silence are the account's, as their crawls' are.

Each tick also runs the silence check (:mod:`producers.crawler.silence`) and refreshes
the figures the crawler's metrics read (:class:`ReconcileFigures`). State is bounded by
the page source: one due time per page it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from convsync.errors import ConvsyncError
from convsync.settings import Settings
from producers.crawler import silence
from producers.crawler.request import new_request, submit
from producers.crawler.state import Pool, record_queued
from schemas.crawl import CrawlRequest

log = logging.getLogger(__name__)

# The pages to reconcile now (ids). A pages table replaces the configured tokens here.
PageSource = Callable[[], Awaitable[Sequence[str]]]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Return ``value`` in seconds when it is a text like ``90``, ``30m`` or ``6h``."""
    if not isinstance(value, str):
        return value
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (say e.g. 6h, 30m or 90s)")
    return float(match.group(1)) * _UNIT[match.group(2)]


class ReconcileSettings(BaseSettings):
    """When reconciliation runs (env prefix ``CONVSYNC_RECONCILE_``); durations in seconds
    or with a unit (``6h``, ``30m``)."""

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_RECONCILE_", frozen=True, extra="ignore")

    # The period of each page's incremental crawl; 0 turns reconciliation off.
    every: float = Field(default=6 * 3600.0, ge=0)
    # Each next turn falls at every * (1 +- jitter).
    jitter: float = Field(default=0.1, ge=0, lt=1)
    # How often due pages are looked for (None: every / 20, at most 30 s).
    tick: float | None = Field(default=None, gt=0)
    max_per_tick: int = Field(default=50, ge=1)
    # The silence check's window (None: 2 * every); see silence.py.
    silence_window: float | None = Field(default=None, gt=0)
    # Instagram accounts to reconcile: account id -> the linked Facebook Page's id.
    instagram: dict[str, str] = Field(default_factory=dict)

    @field_validator("every", "tick", "silence_window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("instagram", mode="after")
    @classmethod
    def _linked(cls, value: dict[str, str]) -> dict[str, str]:
        for account, page in value.items():
            if not account or not page or account == page:
                raise ValueError(
                    "CONVSYNC_RECONCILE_INSTAGRAM maps Instagram account ids to the ids of"
                    f" their linked pages; {account!r} -> {page!r} is not that"
                )
        return value

    @property
    def tick_seconds(self) -> float:
        """Return the time between two looks for due pages."""
        return self.tick if self.tick is not None else max(0.05, min(self.every / 20, 30.0))

    @property
    def window_seconds(self) -> float:
        """Return the silence check's window."""
        return self.silence_window if self.silence_window is not None else 2 * self.every


class Schedule:
    """When each page is due next (wall-clock seconds); pure, bounded by the page set."""

    def __init__(self, every: float, jitter: float, *, rng: random.Random | None = None) -> None:
        self.every = every
        self.jitter = jitter
        self.rng = rng or random.Random()  # noqa: S311 - spreading, not secrets
        self.due: dict[str, float] = {}

    def phase(self, page_id: str) -> float:
        """Return the page's fixed place in the period, in [0, 1)."""
        return zlib.crc32(page_id.encode()) / 2**32

    def sync(self, pages: Sequence[str], now: float) -> None:
        """Track exactly ``pages``: new ones get their first turn, gone ones are dropped."""
        keep = set(pages)
        for page in [p for p in self.due if p not in keep]:
            del self.due[page]
        for page in pages:
            if page not in self.due:
                spread = self.rng.uniform(0, self.jitter)
                self.due[page] = now + ((self.phase(page) + spread) % 1.0) * self.every

    def take(self, now: float, limit: int) -> list[str]:
        """Return up to ``limit`` pages that are due, the most overdue first."""
        due = sorted((at, p) for p, at in self.due.items() if at <= now)
        return [p for _, p in due[:limit]]

    def next_turn(self, page_id: str, since: float) -> None:
        """Set the page's next turn one (jittered) period after ``since``."""
        if page_id in self.due:
            factor = 1.0 + self.rng.uniform(-self.jitter, self.jitter)
            self.due[page_id] = since + self.every * factor


@dataclass(slots=True)
class ReconcileFigures:
    """What the last tick saw, for metrics and the status endpoint."""

    pages: int = 0
    requested: int = 0
    skipped_recent: int = 0
    failures: int = 0
    last_tick: float = 0.0
    # seconds since each page's last completed crawl started (None: never completed)
    ages: dict[str, float | None] = field(default_factory=dict)
    # crawl_state rows by status
    crawls: dict[str, int] = field(default_factory=dict)
    silent: dict[str, silence.Silence] = field(default_factory=dict)


_LAST_REQUEST = """
SELECT extract(epoch FROM max(requested_at)) FROM {schema}.crawl_history WHERE page_id = %s
"""
_AGES = """
SELECT page_id, extract(epoch FROM last_completed_at) FROM {schema}.crawl_state
WHERE page_id = ANY(%s)
"""
_BY_STATUS = "SELECT status, count(*) FROM {schema}.crawl_state GROUP BY status"


class Reconciler:
    """Requests the due incremental crawls; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        options: ReconcileSettings,
        *,
        pages: PageSource,
        pool: Pool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.options = options
        self.pages = pages
        self.pool = pool
        self.clock = clock
        self.schedule = Schedule(options.every, options.jitter)
        self.figures = ReconcileFigures()
        self.started = clock()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failed tick is logged and the next one tries again."""
        if self.options.every <= 0:
            log.info("reconciliation is off (CONVSYNC_RECONCILE_EVERY=0)")
            return
        log.info(
            "reconciling every page every %.0fs (jitter %.0f%%)",
            self.options.every,
            self.options.jitter * 100,
        )
        while not stop.is_set():
            try:
                await self.tick()
            except (ConvsyncError, psycopg.Error, OSError) as e:
                self.figures.failures += 1
                log.warning("reconciliation tick failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.tick_seconds)

    async def tick(self) -> list[str]:
        """Request the crawls that are due; return their page ids."""
        now = self.clock()
        pages = list(await self.pages())
        # An account's linked page must be one of ours: its token makes the calls.
        linked = self.options.instagram
        known = set(pages)
        pages += sorted(a for a, p in linked.items() if p in known and a not in known)
        self.schedule.sync(pages, now)
        asked: list[str] = []
        records: list[CrawlRequest] = []
        failure: Exception | None = None
        for page in self.schedule.take(now, self.options.max_per_tick):
            record = new_request(page, full=False, via_page=linked.get(page)).model_copy(
                update={"requested_at": int(now * 1000)}
            )
            try:
                last = await asyncio.to_thread(self._claim, record, now)
            except (psycopg.Error, OSError) as e:
                # the pages claimed so far are requested all the same (else their queued
                # rows would stand for requests never made); the rest stay due
                failure = e
                break
            if last is not None:
                # requested less than a period ago (by hand, or by another process)
                self.figures.skipped_recent += 1
                self.schedule.next_turn(page, last)
                continue
            records.append(record)
            asked.append(page)
            self.schedule.next_turn(page, now)
        if records:
            # The same path as `convsync crawl`: a page whose crawl runs joins it.
            try:
                await asyncio.to_thread(submit, self.settings, *records)
            except ConvsyncError:
                for page in asked:  # withdrawn by submit: due again at the next tick
                    self.schedule.due[page] = now
                raise
            self.figures.requested += len(records)
            log.info(
                "reconciliation: incremental crawls requested for %d pages (%s)",
                len(asked),
                ", ".join(asked[:5]) + (" ..." if len(asked) > 5 else ""),
            )
        if failure is not None:
            raise failure
        await self._refresh(pages, now)
        self.figures.last_tick = self.clock()
        return asked

    def _claim(self, record: CrawlRequest, now: float) -> float | None:
        """Return when the page was last requested if that was less than a period ago;
        else record ``record`` as queued and return None.

        The read runs under a transaction-scoped advisory lock on the page, and the
        ``queued`` row is written before the lock is let go, so that of two processes
        due at once one requests and the other sees that request.
        """
        schema = self.settings.db_schema
        url = self.settings.database_url.get_secret_value()
        with psycopg.connect(url, connect_timeout=5) as conn, conn.transaction():
            lock = f"convsync-reconcile:{record.page_id}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            row = conn.execute(
                sql.SQL(_LAST_REQUEST).format(schema=sql.Identifier(schema)), (record.page_id,)
            ).fetchone()
            last = float(row[0]) if row and row[0] is not None else None
            if last is not None and now - last < self.options.every * (1 - self.options.jitter):
                return last
            record_queued(conn, schema, record)
        return None

    async def _refresh(self, pages: Sequence[str], now: float) -> None:
        """Read the ages, crawl states and silence of the pages for the metrics."""
        schema = sql.Identifier(self.settings.db_schema)
        async with self.pool.connection(timeout=5) as conn:
            cur = await conn.execute(sql.SQL(_AGES).format(schema=schema), (list(pages),))
            completed = {str(p): float(t) for p, t in await cur.fetchall() if t is not None}
            cur = await conn.execute(sql.SQL(_BY_STATUS).format(schema=schema))
            crawls = {str(s): int(n) for s, n in await cur.fetchall()}
            silent = await silence.check(
                conn, self.settings.db_schema, pages, window=self.options.window_seconds
            )
        self.figures.pages = len(pages)
        self.figures.ages = {p: (now - completed[p] if p in completed else None) for p in pages}
        self.figures.crawls = crawls
        self.figures.silent = silent


def configured_pages(tokens: Mapping[str, object]) -> PageSource:
    """Return the page source of the configured tokens (``CONVSYNC_PAGE_TOKENS``)."""

    async def pages() -> Sequence[str]:
        return sorted(tokens)

    return pages
