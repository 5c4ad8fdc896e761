"""The crawler's view of the ``pages`` table: page tokens, token failures, paused crawls.

Tokens are read from Postgres (``convsync/pages.py``) and cached for
``CONVSYNC_CRAWL_TOKEN_REFRESH`` seconds, so a token set through the admin API or
``convsync pages add`` is used without a restart. When Graph says a page's token does
not work, the page goes to ``needs_reconnect`` and its crawl pauses: the record that
would run the failed step again is kept in ``pages.paused_crawl`` (the crawl's cursor),
and once the page is ``active`` again (a new token) :meth:`PageTokens.resume_forever`
puts that record back on the crawl topic, where it continues the crawl as any
continuation does. The cache holds one entry per row of ``pages``: the table is its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql
from pydantic import SecretStr

from convsync import pages
from convsync.aproducer import AsyncProducer
from convsync.errors import RetryableError
from convsync.pages import PageToken, TokenCipher
from producers.crawler.exceptions import PageTokenError
from producers.crawler.reconcile import PageSource
from producers.crawler.state import CONNECT_TIMEOUT, Pool

log = logging.getLogger(__name__)

T = TypeVar("T")
# A token's last success is written at most this often per page (seconds).
SUCCESS_EVERY: Final = 60.0


class PageTokens:
    """Page tokens from Postgres for one crawler worker, with the initial set of
    ``CONVSYNC_PAGE_TOKENS`` added to the table (never over a token already there)."""

    def __init__(
        self,
        pool: Pool,
        schema: str,
        cipher: TokenCipher,
        *,
        refresh: float,
        initial: Mapping[str, SecretStr],
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.cipher = cipher
        self.refresh = refresh
        self.initial = dict(initial)
        self._seeded = not self.initial
        self._tokens: dict[str, PageToken] = {}
        self._read_at = -1e9
        self._lock = asyncio.Lock()
        self._worked_at: dict[str, float] = {}
        # Pages needing a new token at the last read (None: not read yet).
        self.needing_reconnect: int | None = None

    async def _with_conn(self, action: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        try:
            async with self.pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                return await action(conn)
        except psycopg.Error as e:
            raise RetryableError(f"pages: {e}") from e

    async def read(self) -> None:
        """Read every page's token now (first adding the initial set, once).

        Raises :class:`RetryableError` when Postgres fails, :class:`ConfigError` when a
        token cannot be decrypted or the schema is not migrated.
        """
        async with self._lock:
            if not self._seeded:
                added = await self._with_conn(
                    lambda c: pages.seed_pages(c, self.schema, self.cipher, self.initial)
                )
                self._seeded = True
                if added:
                    log.info("pages added from CONVSYNC_PAGE_TOKENS: %s", ", ".join(added))
            self._tokens = await self._with_conn(
                lambda c: pages.crawler_tokens(c, self.schema, self.cipher)
            )
            self._read_at = time.monotonic()
            self._count()
            for page in list(self._worked_at):
                if page not in self._tokens:
                    del self._worked_at[page]

    async def get(self, page_id: str) -> PageToken | None:
        """Return the token of ``page_id`` (None: not a page convsync syncs), at most
        ``refresh`` seconds old. Raises like :meth:`read`."""
        if time.monotonic() - self._read_at >= self.refresh:
            await self.read()
        return self._tokens.get(page_id)

    async def rejected(
        self, page_id: str, token: PageToken, *, message: str, error: str, paused: bytes | None
    ) -> str | None:
        """Record that Graph refused ``token`` of ``page_id`` and keep the crawl record
        ``paused`` to run once a new token arrives. Return the page's status before
        (``active``: this is news), or None when the token was replaced meanwhile."""
        prior = await self._with_conn(
            lambda c: pages.token_rejected(
                c,
                self.schema,
                page_id,
                version=token.version,
                message=message,
                error=error,
                paused_crawl=paused,
            )
        )
        if prior is None:
            self._read_at = -1e9  # read the new token before the step runs again
        else:
            self._tokens[page_id] = PageToken(
                token.token, "needs_reconnect", message, token.version
            )
            self._count()
        return prior

    def _count(self) -> None:
        self.needing_reconnect = sum(
            1 for t in self._tokens.values() if t.status == "needs_reconnect"
        )

    async def worked(self, page_id: str) -> None:
        """Note that the token of ``page_id`` just worked (written at most once a minute)."""
        now = time.monotonic()
        if now - self._worked_at.get(page_id, -1e9) < SUCCESS_EVERY:
            return
        self._worked_at[page_id] = now
        try:
            await self._with_conn(lambda c: pages.token_worked(c, self.schema, page_id))
        except RetryableError as e:
            log.debug("token success of page %s not written: %s", page_id, e)

    async def resume_paused(self, producer: AsyncProducer, topic: str) -> int:
        """Put the paused crawls of pages that are active again back on ``topic``;
        return how many. The record is produced before it is forgotten: a crash between
        the two produces it twice, and the second copy is a duplicate step."""
        due = await self._with_conn(lambda c: pages.crawls_to_resume(c, self.schema))
        for page_id, record in due:
            await producer.send_batch(topic, [(page_id.encode(), record)])
            await self._with_conn(
                functools.partial(_forget, schema=self.schema, page_id=page_id, record=record)
            )
            log.info("page %s has a new token: its paused crawl resumes from its cursor", page_id)
        return len(due)

    async def resume_forever(self, producer: AsyncProducer, topic: str) -> None:
        """Every ``refresh`` seconds, read the tokens and resume what can be resumed."""
        while True:
            try:
                await self.read()
                await self.resume_paused(producer, topic)
            except RetryableError as e:
                log.warning("pages not read (retrying in %.0fs): %s", self.refresh, e)
            except Exception:
                log.exception("pages not read")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.sleep(self.refresh)


# The page tokens to use now, page id -> token.
TokenSource = Callable[[], Awaitable[Mapping[str, str]]]


def table_pages(pool: Pool, schema: str, initial: Mapping[str, object]) -> PageSource:
    """Return the reconciler's page source: the ``active`` Messenger pages of the table,
    and the pages of the initial set not in the table yet (the worker adds them on its
    first read). A page needing a new token, or removed, is not reconciled. An Instagram
    account is crawled through its linked page (``CONVSYNC_RECONCILE_INSTAGRAM``), never
    as a page of its own."""

    async def source() -> Sequence[str]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> Sequence[str]:
            cur = await conn.execute(
                sql.SQL("SELECT page_id, status FROM {}.pages WHERE platform = 'messenger'").format(
                    sql.Identifier(schema)
                )
            )
            rows = dict(await cur.fetchall())
            active = {p for p, status in rows.items() if status == "active"}
            return sorted(active | {p for p in initial if p not in rows})

        try:
            async with pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                return await read(conn)
        except psycopg.Error as e:
            raise RetryableError(f"pages: {e}") from e

    return source


def table_tokens(pool: Pool, schema: str, cipher: TokenCipher) -> TokenSource:
    """Return a source of the ``active`` pages' tokens, read from the table at each call
    (the profile fetcher asks once per tick). A page needing a new token, or removed, is
    left out: nothing is sent with a token Graph refused."""

    async def source() -> dict[str, str]:
        try:
            async with pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                read = await pages.crawler_tokens(conn, schema, cipher)
        except psycopg.Error as e:
            raise RetryableError(f"pages: {e}") from e
        return {p: t.token.get_secret_value() for p, t in read.items() if t.status == "active"}

    return source


# Record that Graph refused a page's token: (page id, the token sent, the error) -> the
# page's status before (``active``: this call made the change, the one to announce), or
# None when the token was replaced (or the page removed) meanwhile.
TokenRejecter = Callable[[str, str, PageTokenError], Awaitable[str | None]]


def table_rejecter(pool: Pool, schema: str, cipher: TokenCipher) -> TokenRejecter:
    """Return a :data:`TokenRejecter` writing to the table: the page goes to
    ``needs_reconnect`` with the error's message (its paused crawl, if any, kept), but
    only while the token sent is still the page's (a token replaced since is news the
    refusal must not undo)."""

    async def rejected(page_id: str, token: str, error: PageTokenError) -> str | None:
        try:
            async with pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                now = (await pages.crawler_tokens(conn, schema, cipher)).get(page_id)
                if now is None or now.token.get_secret_value() != token:
                    return None
                return await pages.token_rejected(
                    conn,
                    schema,
                    page_id,
                    version=now.version,
                    message=error.message,
                    error=str(error),
                    paused_crawl=None,
                )
        except psycopg.Error as e:
            raise RetryableError(f"pages: {e}") from e

    return rejected


async def _forget(
    conn: psycopg.AsyncConnection[Any], *, schema: str, page_id: str, record: bytes
) -> None:
    await pages.crawl_resumed(conn, schema, page_id, record)
