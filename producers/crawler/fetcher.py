"""Fetch one Graph page for one page id: pacing, throttle pauses and bounded retries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from convsync.errors import RetryableError, ThrottledError
from producers.crawler.app_usage import AppLimiter
from producers.crawler.config import CrawlerSettings
from producers.crawler.exceptions import (
    AppThrottledError,
    CrawlFailedError,
    ForeignUrlError,
    GraphPermanentError,
    PageTokenError,
)
from producers.crawler.graph import GraphClient, PagePacer, backoff
from producers.crawler.step import FetchStats

log = logging.getLogger(__name__)


# Graph code 190: the access token is invalid; its subcodes say why.
TOKEN_INVALID: Final = 190
EXPIRED_SUBCODES: Final = frozenset({463, 467})
REVOKED_SUBCODES: Final = frozenset({458, 459, 460, 464})
# Code 10 and 200-299: the token lacks a permission.
PERMISSION_CODES: Final = frozenset({10, *range(200, 300)})


def token_trouble(code: int | None, subcode: int | None) -> str | None:
    """Return what a person is told when Graph's ``code``/``subcode`` says the page's
    token does not work (None: it is another kind of error)."""
    if code == TOKEN_INVALID:
        if subcode in EXPIRED_SUBCODES:
            return "the token expired: reconnect the page"
        if subcode == 460:
            return "the token was invalidated by a password change: reconnect the page"
        if subcode in REVOKED_SUBCODES:
            return "the token was revoked (the app was removed or logged out): reconnect the page"
        return "the token is invalid: reconnect the page"
    if code in PERMISSION_CODES:
        return "the token lacks a permission convsync needs: reconnect the page and grant it"
    return None


class PageFetcher:
    """Fetches Graph URLs for one page, within that page's pace; other pages never wait."""

    def __init__(
        self,
        client: GraphClient,
        *,
        page_id: str,
        token: str,
        settings: CrawlerSettings,
        app: AppLimiter | None = None,
    ) -> None:
        self.client = client
        self.page_id = page_id
        self.token = token
        self.settings = settings
        self.pacer = PagePacer(settings.calls_per_second, slow_down_at=settings.slow_down_at)
        # The app-wide limit, shared by every page of the worker (None: not applied).
        self.app = app

    async def __call__(self, url: str) -> tuple[dict[str, Any], FetchStats]:
        """Return the JSON of ``url`` and what it cost.

        Throttling pauses this page (for the regain time, else a backoff) and tries
        again; transient errors are retried ``max_attempts`` times with jittered
        backoff. Raises :class:`CrawlFailedError` for a permanent error, a URL outside
        the Graph origin (nothing is sent) or when the retries run out.
        """
        s = self.settings
        stats = FetchStats()
        attempts = 0
        while True:
            await self.pacer.wait()
            if self.app is not None:
                await self.app.wait()
            stats.api_calls += 1
            try:
                body, usage = await self.client.get(url, self.token)
            except ThrottledError as e:
                stats.throttle_waits += 1
                if stats.throttle_waits > s.max_throttle_waits:
                    raise CrawlFailedError(
                        f"still throttled after {stats.throttle_waits - 1} waits: {e}"
                    ) from e
                wait = e.retry_after or backoff(
                    stats.throttle_waits + 2, base=s.backoff_base, cap=s.backoff_max
                )
                stats.throttle_seconds += wait
                app_wide = isinstance(e, AppThrottledError)
                log.info(
                    "%s throttled, pausing %.2fs: %s",
                    "the app" if app_wide else f"page {self.page_id}",
                    wait,
                    e,
                )
                if self.app is not None:
                    self.app.throttled(wait, app_wide=app_wide)
                self.pacer.pause(wait)
                continue
            except GraphPermanentError as e:
                told = token_trouble(e.code, e.subcode)
                if told is not None:
                    raise PageTokenError(str(e), message=told) from e
                raise CrawlFailedError(str(e)) from e
            except ForeignUrlError as e:
                raise CrawlFailedError(f"refused to fetch: {e}") from e
            except RetryableError as e:
                attempts += 1
                stats.retries += 1
                if attempts >= s.max_attempts:
                    raise CrawlFailedError(
                        f"gave up after {attempts} transient errors, last: {e}"
                    ) from e
                delay = backoff(attempts, base=s.backoff_base, cap=s.backoff_max)
                log.warning("page %s: %s; retry %d in %.2fs", self.page_id, e, attempts, delay)
                await asyncio.sleep(delay)
                continue
            self.pacer.observe(usage)
            if self.app is not None and usage.app_percent is not None:
                self.app.observe(usage.app_percent, usage.app_regain_seconds)
            return body, stats
