"""The app-wide rate limit: ``X-App-Usage`` is one budget for every page and worker.

Meta counts the calls of all pages of an app against one app budget and reports how much
of it is used in every response's ``X-App-Usage``. A page's pacer (``graph.PagePacer``)
only knows its own page; this limiter sits beside it, shared by every fetcher of a
worker, and by every worker of the app through one Postgres row (``app_usage``,
migration 0010): each worker publishes its freshest observation and adopts a fresher
one published by another, so a worker that has not called for a while (or just started)
does not burst into a budget the others have used up.

How it slows down: below ``app_slow_down_at`` it adds nothing. Above it, the worker's
calls are spaced by ``gap = app_gap_scale * (u - slow) / (hold - u)`` seconds, which
grows without bound as the usage ``u`` nears ``app_hold_at``; at or above that, one
probe call goes out per ``app_probe_every`` (someone has to see the usage fall again).
Since the gap only grows with the usage, the usage settles where the app's calls equal
the budget's refill rate, between the two thresholds: the budget is neither left unused
(which would waste its refill) nor run into its limit (throttling errors). A throttling
answer for the whole app (code 4, ``AppThrottledError``) pauses every page of every worker
for the regain time.

Why Postgres and not Kafka: the crawler already keeps its shared, mutable state there
(``crawl_state``), and this is a single latest value that every worker reads several
times a second. A compacted Kafka topic would need a consumer per worker reading it
from its end, for a register one ``UPDATE ... WHERE observed_at <`` keeps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from producers.crawler.config import CrawlerSettings

log = logging.getLogger(__name__)

# The row's key: one app per deployment (the app whose secret the gateway checks).
APP_KEY: Final = "graph"

_PUBLISH = """
INSERT INTO {schema}.app_usage AS u (app, percent, regain_until, observed_at)
VALUES (%(app)s, %(percent)s, to_timestamp(%(regain)s), to_timestamp(%(at)s))
ON CONFLICT (app) DO UPDATE SET
    percent = EXCLUDED.percent,
    regain_until = GREATEST(u.regain_until, EXCLUDED.regain_until),
    observed_at = EXCLUDED.observed_at
WHERE u.observed_at < EXCLUDED.observed_at OR u.regain_until < EXCLUDED.regain_until
"""
_READ = """
SELECT percent, extract(epoch FROM regain_until), extract(epoch FROM observed_at)
FROM {schema}.app_usage WHERE app = %s
"""


@dataclass(slots=True)
class AppCounts:
    """Counts since start (the crawler's metrics)."""

    calls: int = 0
    # calls that waited for the app-wide gap or an app-wide pause
    slowed: int = 0
    page_throttles: int = 0
    app_throttles: int = 0
    syncs_failed: int = 0


class AppLimiter:
    """Spaces the calls of one worker by the app's usage; see the module docstring."""

    def __init__(
        self,
        crawler: CrawlerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.slow_down_at = crawler.app_slow_down_at
        self.hold_at = max(crawler.app_hold_at, crawler.app_slow_down_at)
        self.scale = crawler.app_gap_scale
        self.probe_every = crawler.app_probe_every
        self.clock = clock
        self.wall = wall
        self.percent = 0.0
        # wall time (s) of the observation ``percent`` comes from (any worker's)
        self.observed_at = 0.0
        # wall time until which the app is paused (Meta's regain time)
        self.regain_until = 0.0
        self.next_at = 0.0
        self.counts = AppCounts()
        self._published = (0.0, 0.0)

    def gap(self) -> float:
        """Return the spacing of this worker's calls at the current usage, in seconds."""
        u = self.percent
        if u <= self.slow_down_at:
            return 0.0
        if u >= self.hold_at:
            return self.probe_every
        return min(self.probe_every, self.scale * (u - self.slow_down_at) / (self.hold_at - u))

    async def wait(self) -> None:
        """Sleep until this worker may make its next Graph call, and book that call."""
        slowed = False
        while True:
            now = self.clock()
            gate = max(self.next_at, now + self.regain_until - self.wall())
            if gate <= now:
                break
            slowed = True
            await asyncio.sleep(gate - now)
        self.next_at = now + self.gap()
        self.counts.calls += 1
        if slowed:
            self.counts.slowed += 1

    def observe(self, percent: float, regain_seconds: float = 0.0) -> None:
        """Take the ``X-App-Usage`` of a response received now."""
        self.percent, self.observed_at = percent, self.wall()
        if percent >= 100 and regain_seconds > 0:
            self.regain_until = max(self.regain_until, self.wall() + regain_seconds)

    def throttled(self, seconds: float, *, app_wide: bool) -> None:
        """Count a throttling answer; an app-wide one pauses every page for ``seconds``."""
        if not app_wide:
            self.counts.page_throttles += 1
            return
        self.counts.app_throttles += 1
        self.percent, self.observed_at = 100.0, self.wall()
        self.regain_until = max(self.regain_until, self.wall() + seconds)

    async def sync(self, pool: AsyncConnectionPool[Any], schema: str) -> None:
        """Publish this worker's freshest usage, then adopt a fresher one of another."""
        q = sql.Identifier(schema)
        try:
            async with pool.connection(timeout=5) as conn:
                mine = (self.observed_at, self.regain_until)
                if self.observed_at > 0 and mine != self._published:
                    params = {
                        "app": APP_KEY,
                        "percent": self.percent,
                        "regain": self.regain_until,
                        "at": self.observed_at,
                    }
                    await conn.execute(sql.SQL(_PUBLISH).format(schema=q), params)
                    self._published = mine
                cur = await conn.execute(sql.SQL(_READ).format(schema=q), (APP_KEY,))
                row = await cur.fetchone()
        except (psycopg.Error, TimeoutError) as e:
            # Without the shared row each worker still sees the usage in its own
            # responses; the next sync tries again.
            self.counts.syncs_failed += 1
            log.debug("app usage sync failed: %s", e)
            return
        if row is None:
            return
        percent, regain, observed = float(row[0]), float(row[1] or 0), float(row[2])
        self.regain_until = max(self.regain_until, regain)
        if observed > self.observed_at:
            self.percent, self.observed_at = percent, observed

    async def sync_forever(self, pool: AsyncConnectionPool[Any], schema: str, every: float) -> None:
        """Run :meth:`sync` every ``every`` seconds until cancelled."""
        while True:
            await self.sync(pool, schema)
            await asyncio.sleep(every)
