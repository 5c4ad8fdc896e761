"""The pages convsync syncs and their tokens, kept in Postgres (``pages``, migration 0013).

Tokens are encrypted at rest with Fernet (``cryptography``): AES-128-CBC with an
HMAC-SHA256 over a versioned token, a recipe that needs no nonce management from us and
whose :class:`MultiFernet` makes key rotation a matter of configuration.
``CONVSYNC_SECRET_KEY`` holds one or more Fernet keys separated by commas: the first
encrypts, every one decrypts, so a new key goes first and the old one stays until
``convsync pages rotate-key`` (or the next token update) has re-encrypted every row.

Nothing here ever hands a token to an API caller: :class:`PageInfo` has no token field;
only :func:`active_tokens` (for the crawler) decrypts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import psycopg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from psycopg import sql
from pydantic import SecretStr

from convsync.errors import ConfigError

Platform = Literal["messenger", "instagram"]
PLATFORMS: Final = ("messenger", "instagram")
PAGE_ID: Final = re.compile(r"^[0-9]{1,64}$")
MAX_NAME: Final = 200
MAX_TOKEN: Final = 4096
# What an access token is made of (Meta's are letters and digits): nothing else is sent.
TOKEN_TEXT: Final = re.compile(rf"[!-~]{{1,{MAX_TOKEN}}}")
MAX_MESSAGE: Final = 1000
# Read at most this many pages in one listing (the admin API pages through the rest).
MAX_LIST: Final = 1000


class TokenCipher:
    """Encrypts and decrypts page tokens with the keys of ``CONVSYNC_SECRET_KEY``."""

    def __init__(self, keys: str | SecretStr) -> None:
        text = keys.get_secret_value() if isinstance(keys, SecretStr) else keys
        parts = [k.strip() for k in text.split(",") if k.strip()]
        if not parts:
            raise ConfigError(
                "CONVSYNC_SECRET_KEY is not set: page tokens are stored encrypted with it"
                " (make one with `convsync pages new-key`)"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except ValueError as e:
            raise ConfigError(
                "CONVSYNC_SECRET_KEY must be Fernet keys (32 url-safe base64-encoded bytes),"
                " separated by commas"
            ) from e

    @staticmethod
    def new_key() -> str:
        """Return a new random key."""
        return Fernet.generate_key().decode()

    def encrypt(self, token: str) -> bytes:
        """Return ``token`` encrypted with the first key."""
        return self._fernet.encrypt(token.encode())

    def decrypt(self, blob: bytes) -> str:
        """Return the token in ``blob``. Raises :class:`ConfigError` if no key opens it."""
        try:
            return self._fernet.decrypt(bytes(blob)).decode()
        except InvalidToken as e:
            raise ConfigError(
                "a page token cannot be decrypted with CONVSYNC_SECRET_KEY (was the key"
                " replaced instead of rotated? keep the old key after the new one)"
            ) from e

    def rotate(self, blob: bytes) -> bytes:
        """Return ``blob`` encrypted again with the first key."""
        try:
            return self._fernet.rotate(bytes(blob))
        except InvalidToken as e:
            raise ConfigError("a page token cannot be decrypted with CONVSYNC_SECRET_KEY") from e


@dataclass(frozen=True, slots=True)
class PageInfo:
    """A page as the admin API and the CLI show it: never its token."""

    page_id: str
    platform: str
    name: str | None
    status: str
    status_message: str | None
    token_source: str
    token_updated_at: datetime
    token_last_success_at: datetime | None
    token_last_error_at: datetime | None
    token_last_error: str | None
    subscribed_fields: list[str]
    crawl_paused: bool
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of the admin API (times in ISO 8601)."""

        def iso(v: datetime | None) -> str | None:
            return None if v is None else v.isoformat()

        return {
            "page_id": self.page_id,
            "platform": self.platform,
            "name": self.name,
            "status": self.status,
            "status_message": self.status_message,
            "token_source": self.token_source,
            "token_updated_at": iso(self.token_updated_at),
            "token_last_success_at": iso(self.token_last_success_at),
            "token_last_error_at": iso(self.token_last_error_at),
            "token_last_error": self.token_last_error,
            "subscribed_fields": self.subscribed_fields,
            "crawl_paused": self.crawl_paused,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


def check_page(page_id: str, platform: str, name: str | None, token: str) -> None:
    """Raise :class:`ValueError` with a message for the caller if any field is bad."""
    if not PAGE_ID.match(page_id):
        raise ValueError("page_id must be the page's (or account's) numeric id")
    if platform not in PLATFORMS:
        raise ValueError("platform must be 'messenger' or 'instagram'")
    if name is not None and len(name) > MAX_NAME:
        raise ValueError(f"name is longer than {MAX_NAME} characters")
    if not TOKEN_TEXT.fullmatch(token):
        raise ValueError(
            f"access_token must be 1 to {MAX_TOKEN} printable ASCII characters, no whitespace"
        )


_COLUMNS: Final = (
    "page_id, platform, name, status, status_message, token_source, token_updated_at,"
    " token_last_success_at, token_last_error_at, token_last_error, subscribed_fields,"
    " paused_crawl IS NOT NULL, created_at, updated_at"
)

_PUT: Final = """
INSERT INTO {schema}.pages AS p (page_id, platform, name, status, token_encrypted,
    token_source, token_updated_at)
VALUES (%(page)s, %(platform)s, %(name)s, 'active', %(token)s, 'api', now())
ON CONFLICT (page_id) DO UPDATE SET
    platform = EXCLUDED.platform, name = COALESCE(EXCLUDED.name, p.name), status = 'active',
    status_message = NULL, token_encrypted = EXCLUDED.token_encrypted, token_source = 'api',
    token_updated_at = now(), updated_at = now()
RETURNING (xmax = 0)
"""

_SEED: Final = """
INSERT INTO {schema}.pages (page_id, platform, status, token_encrypted, token_source)
VALUES (%s, %s, 'active', %s, 'env') ON CONFLICT (page_id) DO NOTHING RETURNING page_id
"""

_REMOVE: Final = """
UPDATE {schema}.pages SET status = 'removed', token_encrypted = NULL, paused_crawl = NULL,
    status_message = 'removed: not synced any more (its data stays)', updated_at = now()
WHERE page_id = %s AND status <> 'removed' RETURNING page_id
"""


def _q(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(schema=sql.Identifier(schema))


def _info(row: tuple[Any, ...]) -> PageInfo:
    return PageInfo(
        page_id=row[0],
        platform=row[1],
        name=row[2],
        status=row[3],
        status_message=row[4],
        token_source=row[5],
        token_updated_at=row[6],
        token_last_success_at=row[7],
        token_last_error_at=row[8],
        token_last_error=row[9],
        subscribed_fields=list(row[10]),
        crawl_paused=bool(row[11]),
        created_at=row[12],
        updated_at=row[13],
    )


async def put_page(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    cipher: TokenCipher,
    *,
    page_id: str,
    platform: str,
    name: str | None,
    token: str,
) -> bool:
    """Add or update a page and its token (status ``active``); return True if added.

    Raises :class:`ValueError` for a bad field (see :func:`check_page`).
    """
    check_page(page_id, platform, name, token)
    params = {"page": page_id, "platform": platform, "name": name, "token": cipher.encrypt(token)}
    async with conn.transaction():
        row = await (await conn.execute(_q(_PUT, schema), params)).fetchone()
    return bool(row and row[0])


async def seed_pages(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    cipher: TokenCipher,
    tokens: Mapping[str, SecretStr],
    *,
    platform: str = "messenger",
) -> list[str]:
    """Add the pages of ``tokens`` (CONVSYNC_PAGE_TOKENS) that are not in the table yet;
    return those added. A page already there keeps its token, whatever set it (so a
    restart never brings back a token replaced through the API). Raises
    :class:`ConfigError` for a page id that is not a numeric id."""
    added = []
    async with conn.transaction():
        for page_id, token in sorted(tokens.items()):
            if not PAGE_ID.match(page_id):
                raise ConfigError(f"CONVSYNC_PAGE_TOKENS: {page_id!r} is not a numeric page id")
            enc = cipher.encrypt(token.get_secret_value())
            cur = await conn.execute(_q(_SEED, schema), (page_id, platform, enc))
            if await cur.fetchone():
                added.append(page_id)
    return added


async def get_page(
    conn: psycopg.AsyncConnection[Any], schema: str, page_id: str
) -> PageInfo | None:
    """Return the page ``page_id`` (None: unknown or removed)."""
    q = f"SELECT {_COLUMNS} FROM {{schema}}.pages WHERE page_id = %s AND status <> 'removed'"
    row = await (await conn.execute(_q(q, schema), (page_id,))).fetchone()
    return None if row is None else _info(row)


async def list_pages(
    conn: psycopg.AsyncConnection[Any], schema: str, *, after: str = "", limit: int = MAX_LIST
) -> list[PageInfo]:
    """Return up to ``limit`` pages (not removed) with ids after ``after``, by id."""
    q = (
        f"SELECT {_COLUMNS} FROM {{schema}}.pages WHERE status <> 'removed' AND page_id > %s"
        " ORDER BY page_id LIMIT %s"
    )
    cur = await conn.execute(_q(q, schema), (after, max(1, min(limit, MAX_LIST))))
    rows = await cur.fetchall()
    return [_info(r) for r in rows]


async def remove_page(conn: psycopg.AsyncConnection[Any], schema: str, page_id: str) -> bool:
    """Stop syncing ``page_id``: erase its token and drop its paused crawl; its data stays.
    Return False if it is unknown (or removed already)."""
    async with conn.transaction():
        row = await (await conn.execute(_q(_REMOVE, schema), (page_id,))).fetchone()
    return row is not None


async def rotate_keys(conn: psycopg.AsyncConnection[Any], schema: str, cipher: TokenCipher) -> int:
    """Encrypt every stored token again with the first key; return how many."""
    n = 0
    async with conn.transaction():
        cur = await conn.execute(
            _q("SELECT page_id, token_encrypted FROM {schema}.pages FOR UPDATE", schema)
        )
        for page_id, blob in await cur.fetchall():
            if blob is None:
                continue
            await conn.execute(
                _q("UPDATE {schema}.pages SET token_encrypted = %s WHERE page_id = %s", schema),
                (cipher.rotate(blob), page_id),
            )
            n += 1
    return n


# -- what the crawler needs (decrypted tokens, token failures, paused crawls) -----------


@dataclass(frozen=True, slots=True)
class PageToken:
    """A page's token as the crawler uses it; ``version`` is when the token was set."""

    token: SecretStr
    status: str
    status_message: str | None
    version: datetime


async def crawler_tokens(
    conn: psycopg.AsyncConnection[Any], schema: str, cipher: TokenCipher
) -> dict[str, PageToken]:
    """Return the token of every page that is not removed (one row per page: the table
    is the bound)."""
    cur = await conn.execute(
        _q(
            "SELECT page_id, token_encrypted, status, status_message, token_updated_at"
            " FROM {schema}.pages WHERE status <> 'removed'",
            schema,
        )
    )
    return {
        page: PageToken(SecretStr(cipher.decrypt(blob)), status, message, version)
        for page, blob, status, message, version in await cur.fetchall()
    }


_REJECTED: Final = """
WITH old AS (SELECT page_id, status FROM {schema}.pages
             WHERE page_id = %(page)s AND token_updated_at = %(version)s FOR UPDATE)
UPDATE {schema}.pages AS p SET status = 'needs_reconnect', status_message = %(message)s,
    token_last_error_at = now(), token_last_error = %(error)s,
    paused_crawl = COALESCE(%(paused)s::jsonb, p.paused_crawl), updated_at = now()
FROM old WHERE p.page_id = old.page_id AND p.status <> 'removed'
RETURNING old.status
"""


async def token_rejected(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    page_id: str,
    *,
    version: datetime,
    message: str,
    error: str,
    paused_crawl: bytes | None,
) -> str | None:
    """Put ``page_id`` in ``needs_reconnect`` and keep ``paused_crawl`` (the crawl record
    to run once a new token arrives), if its token is still the one of ``version``.

    Return the status the page had (``active``: this call made the change, the one to
    announce), or None if nothing changed: the token was replaced meanwhile (run the
    step again with the new one) or the page was removed.
    """
    params = {
        "page": page_id,
        "version": version,
        "message": message[:MAX_MESSAGE],
        "error": error[:MAX_MESSAGE],
        "paused": None if paused_crawl is None else paused_crawl.decode(),
    }
    async with conn.transaction():
        row = await (await conn.execute(_q(_REJECTED, schema), params)).fetchone()
    return None if row is None else str(row[0])


async def token_worked(conn: psycopg.AsyncConnection[Any], schema: str, page_id: str) -> None:
    """Record that ``page_id``'s token just worked."""
    await conn.execute(
        _q("UPDATE {schema}.pages SET token_last_success_at = now() WHERE page_id = %s", schema),
        (page_id,),
    )


async def crawls_to_resume(
    conn: psycopg.AsyncConnection[Any], schema: str, *, limit: int = 100
) -> list[tuple[str, bytes]]:
    """Return (page, crawl record) of paused crawls whose page has a working token again."""
    cur = await conn.execute(
        _q(
            "SELECT page_id, paused_crawl::text FROM {schema}.pages"
            " WHERE status = 'active' AND paused_crawl IS NOT NULL ORDER BY page_id LIMIT %s",
            schema,
        ),
        (limit,),
    )
    return [(page, text.encode()) for page, text in await cur.fetchall()]


async def crawl_resumed(
    conn: psycopg.AsyncConnection[Any], schema: str, page_id: str, record: bytes
) -> None:
    """Forget the paused crawl ``record`` of ``page_id`` (it is on the crawl topic again)."""
    await conn.execute(
        _q(
            "UPDATE {schema}.pages SET paused_crawl = NULL"
            " WHERE page_id = %s AND paused_crawl = %s::jsonb",
            schema,
        ),
        (page_id, record.decode()),
    )
