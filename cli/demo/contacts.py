"""The demo's contacts: every user's name as the fake Meta gives it, one row each.

Users of crawled threads are named by the crawl's participants; users seen only through
webhooks by the crawler's profile fetcher (the User Profile API). Either way a Messenger
user is named ``User <psid>`` and an Instagram user has the username ``ig_<id>``
(:func:`deploy.simulator.graph_world.default_profile`). Chat-plugin guests (a
``user_ref``) have no profile to ask for and get no contact.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from psycopg import sql

from convsync.db import connect
from convsync.settings import Settings

# Conversations of a user with a PSID (or Instagram-scoped id) whose contact is not in
# yet: neither named by a crawl nor answered (or refused) by the profile API.
_PENDING = """
SELECT count(*) FROM {s}.conversations AS c
LEFT JOIN {s}.contacts AS k USING (page_id, psid)
WHERE c.psid ~ '^[0-9]+$' AND (%(pages)s::text[] IS NULL OR c.page_id = ANY(%(pages)s))
  AND (k.page_id IS NULL OR (k.fetched_at IS NULL AND k.error IS NULL))
"""


@dataclass(frozen=True, slots=True)
class ContactComparison:
    """The ``contacts`` table against the users of the truth."""

    expected: int  # users with a PSID or an Instagram-scoped id
    stored: int  # contact rows
    wrong: int  # expected users missing, or named otherwise than Meta names them
    unexpected: int  # rows of no expected user (a guest's, or a user no one wrote as)

    @property
    def ok(self) -> bool:
        return self.wrong == 0 and self.unexpected == 0


def pending_contacts(settings: Settings, pages: Sequence[str] | None = None) -> int:
    """Return how many users of stored conversations (of ``pages``, else of all) have no
    contact yet."""
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL(_PENDING).format(s=sql.Identifier(settings.db_schema)),
            {"pages": None if pages is None else list(pages)},
        ).fetchone()
    return int(str(row[0])) if row else 0


def compare_contacts(
    settings: Settings, users: AbstractSet[tuple[str, str]], instagram: AbstractSet[str]
) -> ContactComparison:
    """Compare the contacts with ``users`` ((page or account, user) of the truth; guests'
    keys among them expect no contact); ``instagram`` names the Instagram accounts."""
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL("SELECT page_id, psid, name, username FROM {}.contacts").format(
                sql.Identifier(settings.db_schema)
            )
        ).fetchall()
    stored = {(str(p), str(u)): (n, un) for p, u, n, un in rows}
    expected = {(p, u) for p, u in users if u.isdigit()}
    wrong = 0
    for page, user in expected:
        name, username = stored.get((page, user), (None, None))
        if page in instagram:
            wrong += username != f"ig_{user}"
        else:
            wrong += name != f"User {user}"
    return ContactComparison(
        expected=len(expected),
        stored=len(stored),
        wrong=wrong,
        unexpected=len(set(stored) - expected),
    )
