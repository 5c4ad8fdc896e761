"""The profile fetcher: names for the users no crawl named, from the User Profile API.

A crawl names every user it lists (the participants, :mod:`producers.crawler.contacts`);
a user seen only through webhooks has a conversation but no name. Every tick (each
``CONVSYNC_CONTACT_TICK``) the fetcher, one per ``convsync crawler`` process, reads up
to ``batch`` conversations of the pages it has tokens for whose user has no contact, a
contact older than ``CONVSYNC_CONTACT_MAX_AGE``, or a refused one whose backoff has
passed, and asks ``GET /{psid}?fields=first_name,last_name,profile_pic`` (Instagram:
``name,username,profile_pic``) with the page's token.

The calls go through the crawler's own Graph client and limits: a
:class:`~producers.crawler.fetcher.PageFetcher` per page (its pacer, at
``calls_per_second`` of its own, and the process's app-wide limiter, shared with the
crawls and, through Postgres, every other worker), each call bounded by the crawler's
request timeout and retries. A refusal about the user (any permanent Graph error but a
token's: a permission error such as code 10, 230 or 200-299, a user that does not
exist) is recorded on the contact, with ``attempts`` counting them; the user is asked
again after ``backoff * 2^(attempts-1)`` seconds (at most ``backoff_max``) and never
after ``max_attempts`` refusals in a row. A refused token (code 190) stops the page's
turn and, through ``rejected``, sends the page to ``needs_reconnect`` (said once), so
the token source leaves it out until a new token is set; a transient failure stops the
turn and the next tick tries again. Nothing is recorded on the users for either: it is
not about them. State is bounded: one fetcher per configured page.

One fetcher of the deployment works at a time (``ContactStore.turn``, an advisory
lock): every crawler process has the same tokens, and would otherwise ask about the
same users; a process that finds the lock taken skips its tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from convsync.errors import ConvsyncError
from producers.crawler.app_usage import AppLimiter
from producers.crawler.config import CrawlerSettings
from producers.crawler.contacts import ContactStore, DueContact, from_profile
from producers.crawler.exceptions import CrawlFailedError, GraphPermanentError, PageTokenError
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import GraphClient
from producers.crawler.reconcile import parse_duration
from producers.crawler.tokens import TokenRejecter, TokenSource
from producers.crawler.urls import GRAPH_ID, GraphOrigin

log = logging.getLogger(__name__)

FIELDS: Final = {
    "messenger": "first_name,last_name,profile_pic",
    "instagram": "name,username,profile_pic",
}
# Graph errors about the token or the session, not about the user asked for: they stop
# the page's turn and are recorded on no contact.
PAGE_WIDE_CODES: Final = frozenset({102, 190, 463, 467})


class ContactSettings(BaseSettings):
    """The profile fetcher (env prefix ``CONVSYNC_CONTACT_``); durations in seconds or
    with a unit (``7d``, ``6h``, ``30m``)."""

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_CONTACT_", frozen=True, extra="ignore")

    # A contact older than this is fetched again; 0 turns the profile fetcher off.
    max_age: float = Field(default=7 * 86400.0, ge=0)
    # How often users without a (fresh) contact are looked for.
    tick: float = Field(default=60.0, gt=0)
    # Users asked about per tick (all pages together): bounds each tick's calls.
    batch: int = Field(default=100, ge=1, le=10_000)
    # Profile calls per second per page, beside (not within) the crawls' own pace.
    calls_per_second: float = Field(default=0.5, gt=0)
    # Refusals in a row after which a user is not asked again, and the wait before the
    # next ask after the n-th: backoff * 2^(n-1), at most backoff_max.
    max_attempts: int = Field(default=3, ge=1)
    backoff: float = Field(default=3600.0, ge=0)
    backoff_max: float = Field(default=7 * 86400.0, ge=0)

    @field_validator("max_age", "tick", "backoff", "backoff_max", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


@dataclass(slots=True)
class ProfileFigures:
    """Counts since start (metrics, logs and tests)."""

    fetched: int = 0
    refused: int = 0
    # page turns stopped by a token error or a transient failure
    page_failures: int = 0
    tick_failures: int = 0
    # ticks left to another process's fetcher (it held the lock)
    turns_skipped: int = 0
    last_tick: float = 0.0


def profile_url(origin: GraphOrigin, user_id: str, platform: str) -> str:
    """Return the User Profile API URL of ``user_id`` (a Graph id, checked here)."""
    if not GRAPH_ID.fullmatch(user_id):
        raise ValueError(f"not a Graph id: {user_id[:80]!r}")
    fields = FIELDS.get(platform, FIELDS["messenger"])
    return str(URL(f"{origin.base}/{user_id}", encoded=True).with_query({"fields": fields}))


class ProfileFetcher:
    """Fetches the profiles of due users each tick; see the module docstring."""

    def __init__(
        self,
        options: ContactSettings,
        crawler: CrawlerSettings,
        *,
        client: GraphClient,
        store: ContactStore,
        tokens: TokenSource,
        app: AppLimiter | None = None,
        rejected: TokenRejecter | None = None,
    ) -> None:
        self.options = options
        # The crawler's retries and timeouts, at the fetcher's own per-page rate.
        self.crawler = crawler.model_copy(update={"calls_per_second": options.calls_per_second})
        self.client = client
        self.store = store
        self.tokens = tokens
        self.app = app
        # Where a refused token is recorded (the page then needs a reconnect and is left
        # out of the next ticks); None: only logged, and asked again next tick.
        self.rejected = rejected
        self.fetchers: dict[str, PageFetcher] = {}
        self.figures = ProfileFigures()

    def _fetcher(self, page_id: str, token: str) -> PageFetcher:
        fetcher = self.fetchers.get(page_id)
        if fetcher is None or fetcher.token != token:
            fetcher = PageFetcher(
                self.client, page_id=page_id, token=token, settings=self.crawler, app=self.app
            )
            self.fetchers[page_id] = fetcher
        return fetcher

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failed tick is logged and the next one tries again."""
        if self.options.max_age <= 0:
            log.info("the profile fetcher is off (CONVSYNC_CONTACT_MAX_AGE=0)")
            return
        while not stop.is_set():
            try:
                await self.tick()
            except (ConvsyncError, psycopg.Error, OSError) as e:
                self.figures.tick_failures += 1
                log.warning("profile fetch tick failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.tick)

    async def tick(self) -> int:
        """Fetch the profiles of up to ``batch`` due users; return how many were asked."""
        tokens = await self.tokens()
        pages = sorted(tokens)
        # bounded: fetchers of pages no longer configured are dropped
        for page in [p for p in self.fetchers if p not in tokens]:
            del self.fetchers[page]
        if not pages:
            return 0
        async with self.store.turn() as mine:
            if not mine:
                # another process's fetcher is at it: its tick covers these users
                self.figures.turns_skipped += 1
                return 0
            return await self._tick(tokens)

    async def _tick(self, tokens: Mapping[str, str]) -> int:
        pages = sorted(tokens)
        o = self.options
        due = await self.store.due(
            pages,
            max_age=o.max_age,
            max_attempts=o.max_attempts,
            backoff=o.backoff,
            backoff_max=o.backoff_max,
            limit=o.batch,
        )
        by_page: dict[str, list[DueContact]] = {}
        for d in due:
            by_page.setdefault(d.page_id, []).append(d)
        # Pages run at once (each at its own pace), users of one page one after another.
        asked = await asyncio.gather(
            *(self._page(p, users, tokens[p]) for p, users in by_page.items())
        )
        self.figures.last_tick = time.time()
        return sum(asked)

    async def _token_refused(self, page_id: str, token: str, error: PageTokenError) -> None:
        """Put the page in ``needs_reconnect`` (said once: by the call that changed it);
        the token source then leaves it out until a new token is set."""
        assert self.rejected is not None
        prior = await self.rejected(page_id, token, error)
        if prior == "active":
            log.warning(
                "page %s: %s (a profile fetch was refused: %s)", page_id, error.message, error
            )
        else:
            log.debug("profile fetch of page %s refused (page %s): %s", page_id, prior, error)

    async def _page(self, page_id: str, users: list[DueContact], token: str) -> int:
        """Ask about ``users`` of one page; stop at the first error not about a user."""
        fetch = self._fetcher(page_id, token)
        asked = 0
        for user in users:
            asked += 1
            url = profile_url(self.client.origin, user.psid, user.platform)
            try:
                body, _ = await fetch(url)
            except CrawlFailedError as e:
                cause = e.__cause__
                if isinstance(cause, GraphPermanentError) and cause.code not in PAGE_WIDE_CODES:
                    self.figures.refused += 1
                    log.info("profile of %s/%s refused: %s", page_id, user.psid, cause)
                    await self.store.refused(user, str(cause))
                    continue
                self.figures.page_failures += 1
                if isinstance(e, PageTokenError) and self.rejected is not None:
                    await self._token_refused(page_id, token, e)
                else:
                    log.warning("profile fetch of page %s stopped: %s", page_id, e)
                break
            await self.store.from_profile(from_profile(page_id, user.psid, user.platform, body))
            self.figures.fetched += 1
        return asked
