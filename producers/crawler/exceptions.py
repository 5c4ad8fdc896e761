"""Errors of the crawler; throttling and transient failures use convsync.errors."""

from __future__ import annotations

from convsync.errors import ConvsyncError, PoisonError, ThrottledError


class GraphPermanentError(ConvsyncError):
    """The Graph API refused for a reason retrying cannot fix (token, permission, params)."""

    def __init__(
        self, message: str, *, code: int | None, status: int, subcode: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.subcode = subcode


class CrawlFailedError(ConvsyncError):
    """A crawl cannot go on; the message is the reason stored in ``crawl_state``."""


class PageTokenError(CrawlFailedError):
    """The page's token does not work (expired, revoked, missing a permission): the crawl
    pauses, its cursor kept, until the page gets a new token (``tokens.py``).

    ``message`` is what a person is told; the exception text is Graph's own answer.
    """

    def __init__(self, error: str, *, message: str) -> None:
        super().__init__(error)
        self.message = message


class ForeignUrlError(PoisonError):
    """A URL (or an id meant for a URL path) that a page token may not be sent to."""


class AppThrottledError(ThrottledError):
    """The Graph API throttled the whole app (``X-App-Usage``), not just one page."""
