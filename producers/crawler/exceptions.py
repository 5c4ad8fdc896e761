"""Errors of the crawler; throttling and transient failures use convsync.errors."""

from __future__ import annotations

from convsync.errors import ConvsyncError, PoisonError, ThrottledError


class GraphPermanentError(ConvsyncError):
    """The Graph API refused for a reason retrying cannot fix (token, permission, params)."""

    def __init__(self, message: str, *, code: int | None, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class CrawlFailedError(ConvsyncError):
    """A crawl cannot go on; the message is the reason stored in ``crawl_state``."""


class ForeignUrlError(PoisonError):
    """A URL (or an id meant for a URL path) that a page token may not be sent to."""


class AppThrottledError(ThrottledError):
    """The Graph API throttled the whole app (``X-App-Usage``), not just one page."""
