"""The read path's queries, each as plain SQL and as an admin API request.

The SQL is the admin API's own (admin/lists.py, admin/store.py's dashboard statements,
admin/status.py's database part), so both columns of the benchmark measure the same
statements; the API column adds the HTTP round trip, the pool and the JSON.

Targets (which pages, conversations, tags and deep cursors the queries read) are drawn
from the data set once, before anything is timed; drawing them may use OFFSET and full
scans, the timed queries never do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import psycopg
from psycopg import sql

from admin.cursors import Cursors
from admin.lists import (
    ConversationFilter,
    SortKey,
    conversations_query,
    timeline_query,
    timeline_scope,
)
from admin.status import Status, _read_database
from admin.store import OVERVIEW

Conn = psycopg.Connection[Any]
# The admin token of the benchmark's admin server (the cursors' key comes from it).
TOKEN: Final = "read-path-bench-admin-token-0123456789"
PAGE: Final = 50
DEEP_PAGE: Final = 1000
KINDS: Final = (
    "needs_reply_first",
    "needs_reply_deep",
    "messages_last",
    "messages_before",
    "tag",
    "name_prefix",
    "dashboard",
    "status",
)
NEEDS_REPLY: Final = ConversationFilter(needs_reply=True)


@dataclass
class Targets:
    """What the queries read."""

    schema: str
    big_page: str
    pages: list[str]
    deep_page: int  # DEEP_PAGE, or the deepest page the big page's list has
    deep_after: SortKey | None  # the sort key page ``deep_page`` starts after
    long: list[tuple[str, str, SortKey]]  # >= 100 messages: page, psid, 50th message's key
    short: list[tuple[str, str]]
    tagged: list[tuple[str, str]]  # page, tag
    named: list[tuple[str, str]]  # page, the first letters of a user's first or last name


def _one(conn: Conn, text: str, params: Any = None) -> Any:
    row = conn.execute(text, params).fetchone()
    return None if row is None else row[0]


def draw_targets(conn: Conn, schema: str, seed: int = 7) -> Targets:
    """Draw the targets from the data set in ``schema`` (seconds at full size); another
    ``seed`` draws other long conversations (not read yet: not in any cache)."""
    rng = random.Random(seed)
    s = sql.Identifier(schema)
    q = lambda text: sql.SQL(text).format(s=s)  # noqa: E731
    big = str(
        _one(
            conn,
            q(
                "SELECT page_id FROM {s}.conversations WHERE needs_reply"
                " GROUP BY page_id ORDER BY count(*) DESC LIMIT 1"
            ),
        )
    )
    pages = [str(r[0]) for r in conn.execute(q("SELECT page_id FROM {s}.crawl_state")).fetchall()]
    n = int(
        _one(
            conn,
            q("SELECT count(*) FROM {s}.conversations WHERE page_id = %s AND needs_reply"),
            (big,),
        )
    )
    deep = max(1, min(DEEP_PAGE, n // PAGE))
    after: SortKey | None = None
    if deep > 1:
        row = conn.execute(
            q(
                "SELECT (EXTRACT(EPOCH FROM last_message_at) * 1000000)::bigint, psid"
                " FROM {s}.conversations WHERE page_id = %s AND needs_reply"
                " ORDER BY COALESCE(last_message_at, '-infinity'::timestamptz) DESC, psid DESC"
                " OFFSET %s LIMIT 1"
            ),
            (big, PAGE * (deep - 1) - 1),
        ).fetchone()
        assert row is not None
        after = (None if row[0] is None else int(row[0]), str(row[1]))
    long: list[tuple[str, str, SortKey]] = []
    for page, psid in conn.execute(
        q(
            "SELECT page_id, psid FROM {s}.conversations WHERE message_count >= 100"
            " ORDER BY md5(psid || %s) LIMIT 300"
        ),
        (str(seed),),
    ).fetchall():
        row = conn.execute(
            q(
                "SELECT (EXTRACT(EPOCH FROM occurred_at) * 1000000)::bigint, event_id"
                " FROM {s}.events WHERE page_id = %s AND psid = %s AND kind = 'message'"
                ' ORDER BY occurred_at DESC, event_id COLLATE "C" DESC OFFSET 49 LIMIT 1'
            ),
            (page, psid),
        ).fetchone()
        if row is not None:
            long.append((str(page), str(psid), (int(row[0]), str(row[1]))))
    short = [
        (str(p), str(u))
        for p, u in conn.execute(
            q("SELECT page_id, psid FROM {s}.conversations TABLESAMPLE SYSTEM (1) LIMIT 1000")
        ).fetchall()
    ]
    tagged = [
        (str(p), str(t))
        for p, t in conn.execute(
            q(
                # a conversation whose tags were all removed keeps an empty row
                "SELECT page_id, tags[1] FROM {s}.conversation_tags"
                " TABLESAMPLE SYSTEM (10) WHERE cardinality(tags) > 0 LIMIT 500"
            )
        ).fetchall()
    ]
    rng.shuffle(short)
    # What a person types to find someone: three to five letters of a first or last name,
    # half of them of the largest page's users.
    named = [
        (str(p), str(first if rng.random() < 0.5 else last)[: rng.choice((3, 4, 5))])
        for p, first, last in conn.execute(
            q(
                "(SELECT page_id, first_name, last_name FROM {s}.contacts"
                " WHERE page_id = %s AND first_name IS NOT NULL ORDER BY md5(psid) LIMIT 250)"
                " UNION ALL (SELECT page_id, first_name, last_name FROM {s}.contacts"
                " TABLESAMPLE SYSTEM (1) WHERE first_name IS NOT NULL LIMIT 250)"
            ),
            (big,),
        ).fetchall()
    ]
    tagged = [(big, "vip"), *tagged]
    return Targets(schema, big, pages, deep, after, long, short, tagged, named)


@dataclass(frozen=True)
class Request:
    """One query: its statements (plain SQL) and its admin API path (None: a call)."""

    kind: str
    statements: list[tuple[sql.Composable, Any]]
    path: str | None
    run: Callable[[Conn], None] | None = None


def _page(t: Targets, rng: random.Random) -> str:
    """Half of the reads go to the largest page, half to any page."""
    return t.big_page if rng.random() < 0.5 else rng.choice(t.pages)


def request(kind: str, t: Targets, rng: random.Random, cursors: Cursors) -> Request:
    """Return a request of ``kind`` on targets drawn with ``rng``."""
    s = t.schema
    if kind == "needs_reply_first":
        page = _page(t, rng)
        stmt = conversations_query(s, page, NEEDS_REPLY, PAGE + 1, None)
        return Request(kind, [stmt], f"/pages/{page}/conversations?needs_reply=true&limit={PAGE}")
    if kind == "needs_reply_deep":
        page = t.big_page
        stmt = conversations_query(s, page, NEEDS_REPLY, PAGE + 1, t.deep_after)
        cursor = (
            "" if t.deep_after is None else cursors.encode(NEEDS_REPLY.scope(page), t.deep_after)
        )
        path = f"/pages/{page}/conversations?needs_reply=true&limit={PAGE}"
        return Request(kind, [stmt], path + (f"&cursor={cursor}" if cursor else ""))
    if kind in ("messages_last", "messages_before"):
        page, psid, key = rng.choice(t.long) if t.long else (*rng.choice(t.short), None)
        after = key if kind == "messages_before" else None
        stmt = timeline_query(s, "messages", page, psid, PAGE + 1, after)
        path = f"/conversations/{page}/{psid}/messages?limit={PAGE}"
        if after is not None:
            path += "&cursor=" + cursors.encode(timeline_scope("messages", page, psid), after)
        return Request(kind, [stmt], path)
    if kind == "tag":
        page, tag = rng.choice(t.tagged)
        f = ConversationFilter(tag=tag)
        stmt = conversations_query(s, page, f, PAGE + 1, None)
        return Request(kind, [stmt], f"/pages/{page}/conversations?tag={tag}&limit={PAGE}")
    if kind == "name_prefix":
        page, prefix = rng.choice(t.named)
        f = ConversationFilter(name=prefix)
        stmt = conversations_query(s, page, f, PAGE + 1, None)
        path = f"/pages/{page}/conversations?name={quote(prefix)}&limit={PAGE}"
        return Request(kind, [stmt], path)
    if kind == "dashboard":
        ident = sql.Identifier(s)
        stmts: list[tuple[sql.Composable, Any]] = [
            (sql.SQL(text).format(s=ident), params) for _, text, params in OVERVIEW
        ]
        return Request(kind, stmts, "/dashboard/data")

    if kind == "status":

        def run(conn: Conn) -> None:
            _read_database(conn, Status(kafka_bootstrap="", db_schema=s), 300.0)

        return Request(kind, [], None, run)
    raise ValueError(f"unknown query kind {kind}")


def run_sql(conn: Conn, req: Request, *, prepare: bool | None = False) -> int:
    """Run a request's statements; return the rows they gave. Lists are not prepared, as
    the admin API runs them (admin/store.py); ``prepare=None`` is psycopg's default
    (prepared from the fifth run)."""
    if req.run is not None:
        req.run(conn)
        return 0
    rows = 0
    for stmt, params in req.statements:
        rows += len(conn.execute(stmt, params, prepare=prepare).fetchall())
    return rows
