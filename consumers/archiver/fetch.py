"""Download one attachment URL into the media store: checked, bounded, streamed.

Every hop (the URL, then each redirect target) passes :class:`UrlPolicy` before it is
requested; connections go through :class:`PublicResolver`; the body is streamed to a temp
file as it arrives (memory per download is bounded whatever the file's size) and
refused past ``max_bytes``, announced or not. Failures come out as :class:`FetchError`
with a reason code and whether retrying can help.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import aiohttp
from yarl import URL

from consumers.archiver.exceptions import FetchError, RefusedAddressError, RefusedUrlError
from consumers.archiver.policy import PublicResolver, UrlPolicy
from consumers.archiver.settings import ArchiverSettings
from consumers.archiver.storage import MediaStore, StoredFile

log = logging.getLogger(__name__)

WRITE_BYTES: Final = 256 * 1024
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# 403 is what Meta's CDN answers for an expired URL signature ("URL signature expired").
PERMANENT_STATUS: Final = {404: "not_found", 410: "not_found", 401: "forbidden", 403: "forbidden"}
TRANSIENT_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


class Fetcher:
    """One aiohttp session for all downloads of an archiver run."""

    def __init__(self, settings: ArchiverSettings, store: MediaStore) -> None:
        self.settings = settings
        self.store = store
        self.policy = UrlPolicy(settings.hosts, allow_loopback=settings.allow_loopback)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        s = self.settings
        connector = aiohttp.TCPConnector(
            resolver=PublicResolver(allow_loopback=s.allow_loopback),
            limit=s.concurrency,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=s.timeout, connect=s.connect_timeout, sock_read=s.read_timeout
            ),
            # Bytes as served (no transparent gunzip), no cookies, no proxy from the env.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": "convsync-archiver", "Accept-Encoding": "identity"},
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, raw_url: str) -> tuple[StoredFile, str | None]:
        """Download ``raw_url``; return the stored file and its content type.

        Raises :class:`FetchError`: permanent for a refused URL (``bad_url``,
        ``scheme_not_allowed``, ``host_not_allowed``, ``address_not_allowed``), 404/410
        (``not_found``), 401/403 (``forbidden``), other 4xx (``client_error``), a body
        over the limit (``too_large``) or too many redirects; transient for timeouts,
        connection failures, 408/429/5xx.
        """
        try:
            return await self._fetch(raw_url)
        except RefusedUrlError as e:
            raise FetchError(e.reason, str(e), transient=False) from e
        except TimeoutError as e:
            raise FetchError("timeout", "request timed out", transient=True) from e
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, RefusedAddressError):
                raise FetchError("address_not_allowed", str(e.os_error), transient=False) from e
            raise FetchError("connection", f"cannot connect: {e.os_error}", transient=True) from e
        except aiohttp.InvalidURL as e:
            raise FetchError("bad_url", f"invalid URL: {e}", transient=False) from e
        except aiohttp.ClientError as e:
            raise FetchError("connection", f"{type(e).__name__}: {e}", transient=True) from e
        except OSError as e:
            # The media folder (disk full, permissions): the next try may find room.
            log.error("cannot write to the media folder: %s", e)  # noqa: TRY400 - no trace
            raise FetchError("storage", f"media folder: {e}", transient=True) from e

    async def _fetch(self, raw_url: str) -> tuple[StoredFile, str | None]:
        assert self._session is not None
        target = raw_url
        for _ in range(self.settings.max_redirects + 1):
            url = self.policy.check(target)
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status in REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError(
                            "client_error", "redirect without Location", transient=False
                        )
                    target = str(url.join(URL(location, encoded=True)))
                    continue
                self._check_status(resp)
                stored = await self._save(resp)
                return stored, resp.headers.get("Content-Type", "")[:200] or None
        raise FetchError(
            "too_many_redirects",
            f"more than {self.settings.max_redirects} redirects",
            transient=False,
        )

    @staticmethod
    def _check_status(resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        if status == 200:
            return
        detail = f"HTTP {status}"
        if status in PERMANENT_STATUS:
            raise FetchError(PERMANENT_STATUS[status], detail, transient=False)
        if status in TRANSIENT_STATUS:
            reason = "throttled" if status == 429 else "server_error"
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            raise FetchError(reason, detail, transient=True, retry_after=retry_after)
        if 400 <= status < 500:
            raise FetchError("client_error", detail, transient=False)
        if status >= 500:
            raise FetchError("server_error", detail, transient=True)
        raise FetchError("unexpected_status", detail, transient=False)

    async def _save(self, resp: aiohttp.ClientResponse) -> StoredFile:
        limit = self.settings.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise FetchError(
                "too_large", f"announced {resp.content_length} bytes > {limit}", transient=False
            )
        temp = self.store.open_temp()
        committing: asyncio.Future[StoredFile] | None = None
        writing: asyncio.Future[None] | None = None
        buffer = bytearray()
        seen = 0
        try:
            # What arrived, as it arrived: aiohttp stops reading the socket past its
            # buffer's high-water mark, so a chunk stays small. Chunks are gathered up to
            # WRITE_BYTES and hashed and written by a worker thread while the next ones
            # arrive: at most two such pieces per download in memory.
            async for chunk in resp.content.iter_any():
                seen += len(chunk)
                if seen > limit:
                    raise FetchError("too_large", f"more than {limit} bytes", transient=False)
                buffer += chunk
                if len(buffer) >= WRITE_BYTES:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(temp.write, bytes(buffer)))
                    buffer.clear()
            if writing is not None:
                await writing
            temp.write(bytes(buffer))
            # fsync and link block: off the event loop. Shielded: once started, the
            # commit finishes (and removes the temp name) even if this task is cancelled.
            committing = asyncio.ensure_future(asyncio.to_thread(temp.commit))
            return await asyncio.shield(committing)
        finally:
            if writing is not None and not writing.done():
                # A thread is writing to the temp file: let it finish before removing it.
                await asyncio.wait([writing])
            if committing is None:
                temp.abort()
