"""Errors of the archiver: refused URLs and addresses, failed downloads."""

from __future__ import annotations

from convsync.errors import ConvsyncError


class RefusedUrlError(ConvsyncError):
    """A URL the policy does not let the archiver fetch; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RefusedAddressError(OSError):
    """A host name resolved only to addresses the archiver may not connect to (an OSError:
    aiohttp hands a resolver's OSError back inside ``ClientConnectorDNSError``)."""


class FetchError(ConvsyncError):
    """A download that did not give a file: ``reason`` (a short code) and whether a
    later try may succeed (``transient``); ``retry_after`` when the server said."""

    def __init__(
        self, reason: str, detail: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after
