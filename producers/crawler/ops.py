"""The crawler process's own listener: ``/metrics``, ``/healthz`` and ``/status``.

Served on ``CONVSYNC_CRAWLER_METRICS_ADDR`` (``host:port``; ``convsync crawler
--metrics-addr``). The figures are read at scrape time from the objects that keep them
(the worker's :class:`WorkerStats`, the app limiter's counts, the reconciler's last
tick) through prometheus_client's collector API, so there is no second copy to keep in
step. Kept to prometheus_client's standard API so that it can move onto the shared
helpers the other components use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from convsync.errors import ConfigError
from convsync.pages import TokenCipher
from convsync.settings import Settings
from producers.crawler._effects import WorkerStats
from producers.crawler.app_usage import AppLimiter
from producers.crawler.config import CrawlerSettings
from producers.crawler.contacts import ContactStore
from producers.crawler.graph import GraphClient
from producers.crawler.profiles import ContactSettings, ProfileFetcher
from producers.crawler.reconcile import (
    PageSource,
    Reconciler,
    ReconcileSettings,
)
from producers.crawler.retry import Retrier, RetrySettings
from producers.crawler.state import make_pool
from producers.crawler.tokens import table_pages, table_rejecter, table_tokens
from producers.crawler.urls import GraphOrigin

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpsSettings(BaseSettings):
    """Where the crawler's listener binds (env prefix ``CONVSYNC_CRAWLER_``)."""

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_CRAWLER_", frozen=True, extra="ignore")

    # host:port; empty: no listener (several workers on one host need one port each)
    metrics_addr: str = Field(default="")


def split_addr(addr: str) -> tuple[str, int]:
    """Return ``host:port`` as (host, port); ``[::1]:9466`` for IPv6."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"not a host:port address: {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator's choice


@dataclass
class Sources:
    """What the figures are read from; ``stats`` follows the current worker."""

    stats: Callable[[], WorkerStats | None]
    partitions: Callable[[], int]
    limiter: AppLimiter
    reconciler: Reconciler | None
    # Pages whose token does not work, at the current worker's last read of the pages
    # table (None: not read yet).
    reconnect: Callable[[], int | None] = lambda: None
    profiles: ProfileFetcher | None = None


class CrawlerCollector(Collector):
    """The crawler's metrics, read from :class:`Sources` at every scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family."""
        s = self.sources
        counts = s.limiter.counts
        calls = CounterMetricFamily("convsync_crawler_graph_calls", "Graph API calls made.")
        calls.add_metric([], counts.calls)
        yield calls
        pauses = CounterMetricFamily(
            "convsync_crawler_throttle_pauses",
            "Throttling answers, each a pause: of one page, or of the whole app.",
            labels=["scope"],
        )
        pauses.add_metric(["page"], counts.page_throttles)
        pauses.add_metric(["app"], counts.app_throttles)
        yield pauses
        slowed = CounterMetricFamily(
            "convsync_crawler_app_slowed_calls", "Calls that waited for the app-wide limit."
        )
        slowed.add_metric([], counts.slowed)
        yield slowed
        usage = GaugeMetricFamily(
            "convsync_crawler_app_usage_percent", "The freshest X-App-Usage seen (any worker)."
        )
        usage.add_metric([], s.limiter.percent)
        yield usage
        steps = CounterMetricFamily(
            "convsync_crawler_steps", "Crawl records handled by this process.", labels=["outcome"]
        )
        stats = s.stats()
        if stats is not None:
            for outcome in (
                "steps",
                "followed",
                "duplicates",
                "joined",
                "done",
                "failed",
                "resumed",
                "cancelled",
                "skipped_conversations",
            ):
                steps.add_metric([outcome], getattr(stats, outcome))
        yield steps
        reconnect = s.reconnect()
        if reconnect is not None:
            need = GaugeMetricFamily(
                "convsync_pages_needing_reconnect",
                "Pages whose token Graph refused: their crawls are paused until a new token.",
            )
            need.add_metric([], reconnect)
            yield need
        parts = GaugeMetricFamily("convsync_crawler_partitions", "Crawl partitions owned.")
        parts.add_metric([], s.partitions())
        yield parts
        yield from self._reconcile()
        yield from self._profiles()

    def _profiles(self) -> Iterator[Metric]:
        fetcher = self.sources.profiles
        if fetcher is None:
            return
        f = fetcher.figures
        profiles = CounterMetricFamily(
            "convsync_crawler_profile_fetches",
            "User Profile API asks: fetched, refused (recorded on the contact), or a page's"
            " turn stopped (a token error or a transient failure), or a tick skipped (another"
            " process's fetcher held the turn).",
            labels=["outcome"],
        )
        profiles.add_metric(["fetched"], f.fetched)
        profiles.add_metric(["refused"], f.refused)
        profiles.add_metric(["page_stopped"], f.page_failures)
        profiles.add_metric(["turn_skipped"], f.turns_skipped)
        yield profiles

    def _reconcile(self) -> Iterator[Metric]:
        rec = self.sources.reconciler
        if rec is None:
            return
        f = rec.figures
        crawls = GaugeMetricFamily(
            "convsync_crawler_crawls", "Pages by the state of their latest crawl.", labels=["state"]
        )
        for state in ("queued", "running", "done", "failed", "cancelled", "paused"):
            crawls.add_metric([state], f.crawls.get(state, 0))
        yield crawls
        ages = [a for a in f.ages.values() if a is not None]
        never = sum(1 for a in f.ages.values() if a is None)
        oldest = max(ages, default=0.0)
        if never:
            oldest = max(oldest, time.time() - rec.started)
        age = GaugeMetricFamily(
            "convsync_crawler_reconcile_age_seconds",
            "Oldest start of an active page's last completed crawl (a page never crawled"
            " counts from this process's start).",
        )
        age.add_metric([], oldest)
        yield age
        never_g = GaugeMetricFamily(
            "convsync_crawler_pages_never_crawled", "Active pages without a completed crawl."
        )
        never_g.add_metric([], never)
        yield never_g
        silent = GaugeMetricFamily(
            "convsync_crawler_pages_silent",
            "Active pages whose webhooks are silent while crawls find new messages.",
        )
        silent.add_metric([], len(f.silent))
        yield silent
        requested = CounterMetricFamily(
            "convsync_crawler_reconcile_requests", "Incremental crawls the reconciler requested."
        )
        requested.add_metric([], f.requested)
        yield requested
        period = GaugeMetricFamily(
            "convsync_crawler_reconcile_period_seconds", "CONVSYNC_RECONCILE_EVERY."
        )
        period.add_metric([], rec.options.every)
        yield period


def make_app(sources: Sources, registry: CollectorRegistry) -> web.Application:
    """Return the listener's aiohttp application."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        problems = []
        if sources.stats() is None:
            problems.append("no crawler worker running")
        rec = sources.reconciler
        if rec is not None and rec.options.every > 0:
            late = time.time() - max(rec.figures.last_tick, rec.started)
            if late > 3 * rec.options.tick_seconds + 30:
                problems.append(f"reconciliation has not ticked for {late:.0f}s")
        body = {"ok": not problems, "problems": problems}
        return web.Response(
            status=503 if problems else 200,
            body=orjson.dumps(body),
            content_type="application/json",
        )

    async def status(_: web.Request) -> web.Response:
        rec = sources.reconciler
        pages = {}
        if rec is not None:
            for page, age in rec.figures.ages.items():
                flag = rec.figures.silent.get(page)
                pages[page] = {
                    "reconcile_age_seconds": None if age is None else round(age, 1),
                    "next_reconcile_at": rec.schedule.due.get(page),
                    "silent_since": None if flag is None else flag.since,
                    "crawl_found_messages": None if flag is None else flag.crawl_found_messages,
                }
        body = {
            "app_usage_percent": sources.limiter.percent,
            "reconcile_every_seconds": None if rec is None else rec.options.every,
            "pages": pages,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    return app


async def serve(sources: Sources, addr: str) -> web.AppRunner:
    """Start the listener on ``addr``; return its runner (``cleanup()`` stops it)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CrawlerCollector(sources))
    host, port = split_addr(addr)
    runner = web.AppRunner(make_app(sources, registry), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("crawler metrics on http://%s:%d/metrics", host, port)
    return runner


@contextlib.asynccontextmanager
async def process_services(
    settings: Settings,
    *,
    limiter: AppLimiter,
    tokens: Mapping[str, object],
    stats: Callable[[], WorkerStats | None],
    partitions: Callable[[], int],
    stop: asyncio.Event,
    reconnect: Callable[[], int | None] = lambda: None,
    metrics_addr: str | None = None,
    reconcile: ReconcileSettings | None = None,
    page_source: PageSource | None = None,
    retry: RetrySettings | None = None,
    crawler: CrawlerSettings | None = None,
    contacts: ContactSettings | None = None,
    graph_url: str | None = None,
) -> AsyncIterator[Sources]:
    """Run what a ``convsync crawler`` process has once, beside its worker: the
    reconciler, the profile fetcher (``profiles.py``; with ``crawler`` settings only) and
    the listener. All stop when the block exits.

    ``page_source`` names the pages to reconcile (default: the active pages of the
    ``pages`` table, and those of ``tokens`` not in it yet) (those are the pages whose
    profiles the profile fetcher asks for too).
    """
    options = reconcile or ReconcileSettings()
    # Before anything starts: without CONVSYNC_SECRET_KEY this raises ConfigError, which
    # must end the process with its message, not leave tasks and a pool running.
    cipher = TokenCipher(settings.secret_key) if crawler is not None else None
    addr = OpsSettings().metrics_addr if metrics_addr is None else metrics_addr
    # the reconciler; the profile fetcher's lock and its reads and writes
    pool = make_pool(settings.database_url.get_secret_value(), size=3)
    await pool.open(wait=False)
    # The pages table (what the API, the CLI and CONVSYNC_PAGE_TOKENS put there).
    pages = page_source or table_pages(pool, settings.db_schema, tokens)
    reconciler = Reconciler(settings, options, pages=pages, pool=pool)
    sources = Sources(
        stats=stats,
        partitions=partitions,
        limiter=limiter,
        reconciler=reconciler,
        reconnect=reconnect,
    )
    tasks = [asyncio.create_task(reconciler.run(stop), name="crawler-reconcile")]
    # failed crawls asked for again, resuming from their cursor (retry.py)
    retrier = Retrier(settings, retry or RetrySettings())
    tasks.append(asyncio.create_task(retrier.run(stop), name="crawler-retry"))
    session: aiohttp.ClientSession | None = None
    if crawler is not None and cipher is not None:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=crawler.request_timeout)
        )
        client = GraphClient(
            session,
            GraphOrigin(graph_url or settings.graph_url),
            app_secret=settings.app_secret.get_secret_value(),
        )
        sources.profiles = ProfileFetcher(
            contacts or ContactSettings(),
            crawler,
            client=client,
            store=ContactStore(pool, settings.db_schema),
            tokens=table_tokens(pool, settings.db_schema, cipher),
            app=limiter,
            rejected=table_rejecter(pool, settings.db_schema, cipher),
        )
        tasks.append(asyncio.create_task(sources.profiles.run(stop), name="crawler-profiles"))
    runner = await serve(sources, addr) if addr else None
    try:
        yield sources
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if session is not None:
            await session.close()
        if runner is not None:
            await runner.cleanup()
        await pool.close(timeout=3)
