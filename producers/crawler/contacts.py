"""The ``contacts`` table (migration 0015): names from Graph participants and profiles.

Two writers fill it, both in the crawler process: a crawl step that lists conversations
records the name (and an Instagram username) Graph gives each user participant
(:func:`participant_contacts`, :meth:`ContactStore.from_participants`), and the profile
fetcher (:mod:`producers.crawler.profiles`) asks the User Profile API about the users no
crawl named, or named too long ago. Every write is an upsert keyed (page id, user), so
a step run twice or two processes fetching the same user leave one row.

Contacts are a cache of what Meta says about a person now, not facts of the log (names
change; docs/architecture.md, decision 15), so they are written here rather than
published as events and folded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from convsync.errors import ConfigError, RetryableError
from producers.crawler.urls import GRAPH_ID

Platform = Literal["messenger", "instagram"]
# A missing table is not an outage: waiting for it would hide the mistake.
_UNMIGRATED: Final = (pgerrors.UndefinedTable, pgerrors.UndefinedColumn, pgerrors.InvalidSchemaName)
# Meta's names are short; a longer text is cut, never refused (it is only a label).
MAX_TEXT: Final = 256
# A profile picture URL (Meta's CDN URLs with their signatures run to ~300 characters).
MAX_URL: Final = 2048


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """Return ``value`` cut to ``limit`` when it is non-empty text, else None."""
    return value[:limit] if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class Contact:
    """What Meta said about one user of a page."""

    page_id: str
    psid: str
    platform: Platform = "messenger"
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    profile_pic: str | None = None


def platform_of(value: object) -> Platform:
    """Return the platform ``value`` names (anything else: Messenger, the default)."""
    return "instagram" if value == "instagram" else "messenger"


def participant_contacts(
    item: Any, page_id: str, *, platform: Platform = "messenger"
) -> list[Contact]:
    """Return the named user participants of a listed conversation (raw Graph item).

    The page itself, ids that are not Graph ids and participants with neither a name
    nor a username are left out (nothing to record).
    """
    if not isinstance(item, dict):
        return []
    people = item.get("participants")
    data = people.get("data") if isinstance(people, dict) else None
    if not isinstance(data, list):
        return []
    out = []
    for person in data:
        if not isinstance(person, dict):
            continue
        pid = person.get("id")
        if not isinstance(pid, str) or pid == page_id or not GRAPH_ID.fullmatch(pid):
            continue
        name, username = _text(person.get("name")), _text(person.get("username"))
        if name is None and username is None:
            continue
        out.append(Contact(page_id, pid, platform, name=name, username=username))
    return out


def from_profile(page_id: str, psid: str, platform: Platform, body: dict[str, Any]) -> Contact:
    """Return the contact of a User Profile API answer (fields it lacks stay None)."""
    first, last = _text(body.get("first_name")), _text(body.get("last_name"))
    name = _text(body.get("name"))
    if name is None and (first or last):
        name = " ".join(p for p in (first, last) if p)
    return Contact(
        page_id,
        psid,
        platform,
        name=name,
        first_name=first,
        last_name=last,
        username=_text(body.get("username")),
        profile_pic=_text(body.get("profile_pic"), MAX_URL),
    )


# Participants give a name (an Instagram username); what the profile API added (first
# and last name, picture) is kept. A participant's name clears no profile error: the
# error says what the API answered, and the cap on its attempts stands.
_FROM_PARTICIPANTS = """
INSERT INTO {s}.contacts AS k (page_id, psid, platform, name, username, source, fetched_at)
SELECT t.*, 'participants', now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
    AS t(page_id, psid, platform, name, username)
ON CONFLICT (page_id, psid) DO UPDATE SET
    platform = EXCLUDED.platform,
    name = COALESCE(EXCLUDED.name, k.name),
    username = COALESCE(EXCLUDED.username, k.username),
    source = CASE WHEN k.source = 'profile_api' AND k.profile_pic IS NOT NULL
                  THEN k.source ELSE EXCLUDED.source END,
    fetched_at = EXCLUDED.fetched_at
"""

_FROM_PROFILE = """
INSERT INTO {s}.contacts AS k (page_id, psid, platform, name, first_name, last_name,
                               username, profile_pic, source, fetched_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'profile_api', now())
ON CONFLICT (page_id, psid) DO UPDATE SET
    platform = EXCLUDED.platform,
    name = COALESCE(EXCLUDED.name, k.name),
    first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name,
    username = COALESCE(EXCLUDED.username, k.username),
    profile_pic = EXCLUDED.profile_pic,
    source = 'profile_api',
    fetched_at = now(),
    error = NULL,
    error_at = NULL,
    attempts = 0
"""

_REFUSED = """
INSERT INTO {s}.contacts AS k (page_id, psid, platform, source, error, error_at, attempts)
VALUES (%s, %s, %s, 'profile_api', %s, now(), 1)
ON CONFLICT (page_id, psid) DO UPDATE SET
    error = EXCLUDED.error, error_at = now(), attempts = k.attempts + 1
"""

# The users of ``pages`` the profile fetcher should ask about, the most wanted first:
# never named, then refused ones whose backoff has passed, then the stalest. Only
# conversations whose user is a Graph id (a PSID or an Instagram-scoped id): a plugin
# guest (user_ref:...) or an item without a user has no profile to ask for.
_DUE = """
SELECT c.page_id, c.psid, c.platform
FROM {s}.conversations AS c
LEFT JOIN {s}.contacts AS k USING (page_id, psid)
WHERE c.page_id = ANY(%(pages)s)
  AND c.psid ~ '^[0-9]+$'
  AND (k.page_id IS NULL
       OR (k.error IS NULL AND k.fetched_at < now() - %(max_age)s * interval '1 second')
       OR (k.error IS NOT NULL AND k.attempts < %(max_attempts)s
           AND k.error_at < now() - LEAST(%(backoff_max)s,
                                          %(backoff)s * 2 ^ (k.attempts - 1))
                                    * interval '1 second'))
ORDER BY k.fetched_at NULLS FIRST, c.last_message_at DESC NULLS LAST, c.psid
LIMIT %(limit)s
"""


# The advisory lock of the profile fetchers (with the schema: one deployment's fetchers).
_LOCK: Final = "convsync-contacts"


@dataclass(frozen=True, slots=True)
class DueContact:
    """A user whose profile is to be fetched."""

    page_id: str
    psid: str
    platform: Platform


class ContactStore:
    """The SQL of the ``contacts`` table, on the crawler's pool.

    Every method raises :class:`RetryableError` when Postgres cannot take it, and
    :class:`ConfigError` when the table is missing (migration 0015 not applied).
    """

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str) -> None:
        self.pool = pool
        self.schema = schema

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    async def from_participants(self, contacts: Sequence[Contact]) -> None:
        """Record the names a conversations listing gave (the last of one user wins)."""
        if not contacts:
            return
        latest = {(c.page_id, c.psid): c for c in contacts}
        rows = [latest[key] for key in sorted(latest)]
        params = (
            [c.page_id for c in rows],
            [c.psid for c in rows],
            [c.platform for c in rows],
            [c.name for c in rows],
            [c.username for c in rows],
        )
        await self._execute(_FROM_PARTICIPANTS, params)

    async def from_profile(self, contact: Contact) -> None:
        """Record a User Profile API answer; clears the user's error and attempts."""
        c = contact
        params = (
            c.page_id,
            c.psid,
            c.platform,
            c.name,
            c.first_name,
            c.last_name,
            c.username,
            c.profile_pic,
        )
        await self._execute(_FROM_PROFILE, params)

    async def refused(self, due: DueContact, error: str) -> None:
        """Record that the User Profile API refused this user (one more attempt)."""
        await self._execute(_REFUSED, (due.page_id, due.psid, due.platform, error[:500]))

    async def due(
        self,
        pages: Sequence[str],
        *,
        max_age: float,
        max_attempts: int,
        backoff: float,
        backoff_max: float,
        limit: int,
    ) -> list[DueContact]:
        """Return up to ``limit`` users of ``pages`` to ask the profile API about."""
        params = {
            "pages": list(pages),
            "max_age": max_age,
            "max_attempts": max_attempts,
            "backoff": backoff,
            "backoff_max": backoff_max,
            "limit": limit,
        }
        try:
            async with self.pool.connection(timeout=5) as conn:
                cur = await conn.execute(self._q(_DUE), params)
                rows = await cur.fetchall()
        except _UNMIGRATED as e:
            raise ConfigError(f"contacts: the schema is not migrated ({e})") from e
        except (psycopg.Error, TimeoutError) as e:
            raise RetryableError(f"cannot read due contacts: {e}") from e
        return [DueContact(str(p), str(u), platform_of(pl)) for p, u, pl in rows]

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """Hold the profile fetchers' lock while the block runs; yield whether it was got.

        One fetcher of the deployment fetches at a time (a session-level advisory lock
        on a connection kept for the block, idle, not in a transaction), so that two
        crawler processes, which have the same tokens, do not ask about the same users
        twice. If the connection dies the lock goes with it: the worst case is then
        that, one tick long, two fetchers ask about the same users (the upserts keep
        one row each).
        """
        try:
            async with self.pool.connection(timeout=5) as conn:
                key = f"{_LOCK}:{self.schema}"
                cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
                row = await cur.fetchone()
                got = bool(row and row[0])
                try:
                    yield got
                finally:
                    if got:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        except (psycopg.Error, TimeoutError) as e:
            raise RetryableError(f"cannot take the profile fetchers' lock: {e}") from e

    async def _execute(self, text: str, params: Any) -> None:
        try:
            async with self.pool.connection(timeout=5) as conn:
                await conn.execute(self._q(text), params)
        except _UNMIGRATED as e:
            raise ConfigError(f"contacts: the schema is not migrated ({e})") from e
        except (psycopg.Error, TimeoutError) as e:
            raise RetryableError(f"cannot write contacts: {e}") from e
