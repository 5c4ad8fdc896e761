"""The silence flag: a page whose webhooks stopped while crawls still find new messages.

A message that reached Postgres only through a crawl keeps ``source = 'crawler'`` (a
webhook copy outranks it, ``schemas/copies.py``). Over the window (by default two
reconciliation periods), a page is *silent* when crawls stored at least one message
that was sent within the window (``occurred_at``: a backfill of old history does not
count) and no webhook event of the page was stored at all. A page that loses a share of
its webhooks is not silent: some still arrive, and reconciliation fills the rest.

The flag lives in ``page_health`` (migration 0010). It is set and cleared by
conditional updates, and only the process whose update changed it logs the change, so
the log says it once however many crawler processes check, and not again on every check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

_COUNTS = """
SELECT page_id,
       count(*) FILTER (WHERE source = 'crawler' AND kind = 'message'
                        AND occurred_at > now() - make_interval(secs => %(window)s)),
       count(*) FILTER (WHERE source = 'webhook')
FROM {schema}.events
WHERE page_id = ANY(%(pages)s) AND inserted_at > now() - make_interval(secs => %(window)s)
GROUP BY page_id
"""
_UPSERT = """
INSERT INTO {schema}.page_health AS h (page_id, crawl_found_messages, webhook_events, checked_at)
VALUES (%s, %s, %s, now())
ON CONFLICT (page_id) DO UPDATE SET
    crawl_found_messages = EXCLUDED.crawl_found_messages,
    webhook_events = EXCLUDED.webhook_events, checked_at = now()
"""
_SET = """
UPDATE {schema}.page_health SET silent_since = now()
WHERE page_id = %s AND silent_since IS NULL RETURNING page_id
"""
_CLEAR = """
UPDATE {schema}.page_health SET silent_since = NULL
WHERE page_id = %s AND silent_since IS NOT NULL RETURNING page_id
"""
_FLAGGED = """
SELECT page_id, extract(epoch FROM silent_since), crawl_found_messages
FROM {schema}.page_health WHERE silent_since IS NOT NULL AND page_id = ANY(%s)
"""


@dataclass(frozen=True, slots=True)
class Silence:
    """A flagged page: since when (epoch seconds) and what the last check counted."""

    since: float
    crawl_found_messages: int


async def check(
    conn: psycopg.AsyncConnection[Any], schema: str, pages: Sequence[str], *, window: float
) -> dict[str, Silence]:
    """Update the flags of ``pages`` from the last ``window`` seconds; return the flagged."""
    q = sql.Identifier(schema)
    cur = await conn.execute(
        sql.SQL(_COUNTS).format(schema=q), {"pages": list(pages), "window": window}
    )
    counts = {str(p): (int(found), int(hooks)) for p, found, hooks in await cur.fetchall()}
    for page in pages:
        found, hooks = counts.get(page, (0, 0))
        await conn.execute(sql.SQL(_UPSERT).format(schema=q), (page, found, hooks))
        if found > 0 and hooks == 0:
            cur = await conn.execute(sql.SQL(_SET).format(schema=q), (page,))
            if await cur.fetchone() is not None:
                log.warning(
                    "page %s: no webhook in the last %.0fs while crawls found %d new messages;"
                    " check its webhook subscription (flagged silent)",
                    page,
                    window,
                    found,
                )
        elif hooks > 0:
            cur = await conn.execute(sql.SQL(_CLEAR).format(schema=q), (page,))
            if await cur.fetchone() is not None:
                log.info("page %s: webhooks arrive again (silence flag cleared)", page)
    cur = await conn.execute(sql.SQL(_FLAGGED).format(schema=q), (list(pages),))
    return {str(p): Silence(float(t), int(n)) for p, t, n in await cur.fetchall()}
