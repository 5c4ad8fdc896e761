"""The SQL of the admin API's lists, one keyset page at a time.

Three lists: a page's conversations (newest last message first, filtered by needs-reply,
a tag, a time or a prefix of the user's name; each with its user's contact), a
conversation's messages and its events (newest first). Each page of results continues
from the sort key of the previous page's last row (a row comparison that the indexes
take as a range), never with OFFSET, so page 1,000 costs what page 1 does. The statement
text differs per filter (a filter left out is not in the text, rather than ``%s IS NULL
OR ...``): a prepared generic plan then still sees the literal ``needs_reply`` a partial
index is defined by.

The benchmark (tests/bench/read_path) runs these same statements as plain SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from psycopg import sql

Row = dict[str, Any]
# A row's sort key: (µs since the epoch, or None for a conversation never messaged, id).
SortKey = tuple[int | None, str]
Timeline = Literal["messages", "events"]

CONVERSATION_COLUMNS: Final = """
    c.page_id, c.psid, c.thread_id, c.first_message_at, c.last_message_at, c.message_count,
    c.last_message_text, c.last_inbound_at, c.last_outbound_at, c.needs_reply,
    c.read_watermark, c.delivered_watermark, c.version AS projection_version,
    COALESCE(t.tags, '{{}}') AS tags, COALESCE(t.version, 0) AS tags_version,
    k.name AS contact_name, k.first_name AS contact_first_name,
    k.last_name AS contact_last_name, k.username AS contact_username,
    k.profile_pic AS contact_profile_pic, k.source AS contact_source,
    k.fetched_at AS contact_fetched_at, k.error AS contact_error
"""
# The conversation's contact (migration 0015), one primary-key lookup per row listed.
CONTACT_JOIN: Final = "LEFT JOIN {s}.contacts AS k USING (page_id, psid)"
CONTACT_FIELDS: Final = (
    "name", "first_name", "last_name", "username", "profile_pic", "source", "fetched_at",
    "error",
)  # fmt: skip

_CONVERSATIONS: Final = (
    "SELECT"
    + CONVERSATION_COLUMNS
    + """,
    (EXTRACT(EPOCH FROM {o}.last_message_at) * 1000000)::bigint AS sort_us
FROM {source}
LEFT JOIN {s}.conversation_tags AS t USING (page_id, psid)
"""
    + CONTACT_JOIN
    + """
WHERE {o}.page_id = %(page)s {filters}
ORDER BY COALESCE({o}.last_message_at, '-infinity'::timestamptz) DESC, {o}.psid DESC
LIMIT %(limit)s
"""
)
# A tag's list reads conversation_tag_index (migration 0008): one row per conversation and
# tag, in the list's order, with the conversation's last_message_at. The page of rows is
# taken from it first, then joined: joined at once, the planner (which cannot know that
# every row has its conversation) expected the join to keep ~5 % of them, so that the
# LIMIT would never be reached, and read and sorted all the tag's rows instead (28 ms,
# 84 ms cold, for 681 rows of a page). Filtered on needs_reply too, the rows must be
# joined before the LIMIT: the tag's rows are then read in order until the page is full.
_BY_TAG: Final = """(
    SELECT x.page_id, x.psid, x.last_message_at FROM {s}.conversation_tag_index AS x
    WHERE x.page_id = %(page)s AND x.tag = %(tag)s {filters}
    ORDER BY COALESCE(x.last_message_at, '-infinity'::timestamptz) DESC, x.psid DESC
    LIMIT %(limit)s
) AS x
JOIN {s}.conversations AS c USING (page_id, psid)"""
_BY_TAG_JOINED: Final = """{s}.conversation_tag_index AS x
JOIN {s}.conversations AS c USING (page_id, psid)"""
# A name's list reads conversation_name_index (migration 0018): a contact's lowercased
# names (full name, last name, Instagram username) grouped by their first three
# characters (key3), one row per contact and group with the conversation's last message
# time (sort_at: -infinity for none), indexed on (page, key3, sort_at, psid). A prefix of
# three characters or more reads its group newest first, skips the users none of whose
# names start with the whole prefix, and joins the rows one by one until the page of
# results is full: a common prefix costs the page's rows, not a join of every match
# (docs/performance.md, "The read path"). A shorter prefix spans groups, where a user can
# be twice: its rows are made unique and sorted first. A contact without a conversation
# (no time) is left out by the join. The keys compare in "C" (bytes), which makes a prefix
# a range; starts_with gives the planner that range.
_NAME_MATCH: Final = """
  AND EXISTS (SELECT FROM unnest(x.names) AS n(v)
              WHERE starts_with(n.v, lower(%(name)s) COLLATE "C"))"""
# Fewer than three characters: the groups starting with them, each user once.
_NAME_GROUPS: Final = (
    """(
    SELECT DISTINCT ON (x.sort_at, x.psid) x.page_id, x.psid, x.sort_at
    FROM {s}.conversation_name_index AS x
    WHERE x.page_id = %(page)s
      AND starts_with(x.key3, left(lower(%(name)s), 3) COLLATE "C") """
    + _NAME_MATCH
    + """ {filters}
    ORDER BY x.sort_at DESC, x.psid DESC
) AS x"""
)
_BY_NAME: Final = (
    "SELECT"
    + CONVERSATION_COLUMNS
    + """,
    (EXTRACT(EPOCH FROM NULLIF(x.sort_at, '-infinity'::timestamptz)) * 1000000)::bigint AS sort_us
FROM {source}
JOIN {s}.conversations AS c USING (page_id, psid)
LEFT JOIN {s}.conversation_tags AS t USING (page_id, psid)
"""
    + CONTACT_JOIN
    + """
WHERE x.page_id = %(page)s {outer}
ORDER BY x.sort_at DESC, x.psid DESC
LIMIT %(limit)s
"""
)
# Three characters or more: one group, read in the list's order.
_NAME_GROUP: Final = (
    """
  AND x.key3 = left(lower(%(name)s), 3) COLLATE "C" """
    + _NAME_MATCH
)
_NAME_AFTER: Final = """
      AND (x.sort_at, x.psid)
          < (COALESCE('epoch'::timestamptz + %(cur_us)s::bigint * interval '1 microsecond',
                      '-infinity'::timestamptz),
             %(cur_key)s::text)"""
_CONVERSATIONS_AFTER: Final = """
  AND (COALESCE({o}.last_message_at, '-infinity'::timestamptz), {o}.psid)
      < (COALESCE('epoch'::timestamptz + %(cur_us)s::bigint * interval '1 microsecond',
                  '-infinity'::timestamptz),
         %(cur_key)s::text)"""

_TIMELINES: Final = {
    "messages": """
SELECT event_id, mid, occurred_at, direction, text, original_text, edit_number, reactions,
       (EXTRACT(EPOCH FROM occurred_at) * 1000000)::bigint AS sort_us
FROM {s}.messages WHERE page_id = %(page)s AND psid = %(psid)s {filters}
ORDER BY occurred_at DESC, event_id COLLATE "C" DESC LIMIT %(limit)s
""",
    "events": """
SELECT event_id, kind, source, occurred_at, direction, mid, text, watermark, thread_id, attrs,
       (EXTRACT(EPOCH FROM occurred_at) * 1000000)::bigint AS sort_us
FROM {s}.events WHERE page_id = %(page)s AND psid = %(psid)s {filters}
ORDER BY occurred_at DESC, event_id COLLATE "C" DESC LIMIT %(limit)s
""",
}
_TIMELINE_AFTER: Final = """
  AND (occurred_at, event_id COLLATE "C")
      < ('epoch'::timestamptz + %(cur_us)s::bigint * interval '1 microsecond',
         %(cur_key)s::text COLLATE "C")"""


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """The filters of a conversation list (None: not filtered on)."""

    needs_reply: bool | None = None
    since: datetime | None = None
    tag: str | None = None
    name: str | None = None  # a prefix of the contact's name, last name or username

    def scope(self, page_id: str) -> str:
        """What a cursor of this list is bound to (see admin/cursors.py)."""
        since = "" if self.since is None else self.since.isoformat()
        parts = ("conversations", page_id, str(self.needs_reply), since, self.tag or "")
        return "\x1f".join(parts if self.name is None else (*parts, "name", self.name))


def timeline_scope(which: Timeline, page_id: str, psid: str) -> str:
    """What a cursor of a conversation's messages or events is bound to."""
    return "\x1f".join((which, page_id, psid))


def conversations_query(
    schema: str, page_id: str, f: ConversationFilter, limit: int, after: SortKey | None
) -> tuple[sql.Composed, dict[str, Any]]:
    """Return the statement and parameters of one page of ``limit`` conversations."""
    params: dict[str, Any] = {"page": page_id, "limit": limit}
    # Conditions on the row the list is read in order from (o: the tag's row, or the
    # conversation; a name's list has its own statement), and on the conversation.
    ordered: list[str] = []
    on_conversation: list[str] = []
    if f.needs_reply is not None:
        on_conversation.append("AND c.needs_reply" if f.needs_reply else "AND NOT c.needs_reply")
    if f.since is not None:
        ordered.append("AND {o}.last_message_at >= %(since)s")
        params["since"] = f.since
    if after is not None:
        ordered.append(_CONVERSATIONS_AFTER)
        params["cur_us"], params["cur_key"] = after
    if f.tag is not None:
        params["tag"] = f.tag
    s = sql.Identifier(schema)
    if f.name is not None:
        return _name_query(s, f.name, f, params, after, on_conversation)
    o = sql.Identifier("x" if f.tag is not None else "c")
    if f.tag is None:
        source = sql.SQL("{s}.conversations AS c").format(s=s)
        outer = ordered + on_conversation
    elif f.needs_reply is None:
        inner = sql.SQL("\n  ".join(ordered)).format(o=o)
        source = sql.SQL(_BY_TAG).format(s=s, filters=inner)
        outer = []
    else:
        source = sql.SQL(_BY_TAG_JOINED).format(s=s)
        outer = ["AND x.tag = %(tag)s", *ordered, *on_conversation]
    stmt = sql.SQL(_CONVERSATIONS).format(
        source=source, s=s, o=o, filters=sql.SQL("\n  ".join(outer)).format(o=o)
    )
    return stmt, params


def _name_query(
    s: sql.Identifier,
    name: str,
    f: ConversationFilter,
    params: dict[str, Any],
    after: SortKey | None,
    on_conversation: list[str],
) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement of one page of a name's list (see ``_BY_NAME``)."""
    params["name"] = name
    on_index: list[str] = []
    if f.since is not None:
        on_index.append("AND x.sort_at >= %(since)s")
    if after is not None:
        on_index.append(_NAME_AFTER)
    outer = list(on_conversation)
    if f.tag is not None:
        outer.append("AND %(tag)s = ANY(t.tags)")
    if len(name) >= 3:
        source = "{s}.conversation_name_index AS x"
        where = [_NAME_GROUP, *on_index, *outer]
    else:
        source = _NAME_GROUPS.replace("{filters}", "\n  ".join(on_index))
        where = outer
    stmt = sql.SQL(_BY_NAME).format(
        source=sql.SQL(source).format(s=s), s=s, outer=sql.SQL("\n  ".join(where))
    )
    return stmt, params


def timeline_query(
    schema: str, which: Timeline, page_id: str, psid: str, limit: int, after: SortKey | None
) -> tuple[sql.Composed, dict[str, Any]]:
    """Return the statement and parameters of one page of a conversation's messages or
    events."""
    params: dict[str, Any] = {"page": page_id, "psid": psid, "limit": limit}
    if after is not None:
        params["cur_us"], params["cur_key"] = after
    stmt = sql.SQL(_TIMELINES[which]).format(
        s=sql.Identifier(schema),
        filters=sql.SQL(_TIMELINE_AFTER if after is not None else ""),
    )
    return stmt, params


def nest_contact(row: Row) -> Row:
    """Move the ``contact_*`` columns of a conversation row into ``row["contact"]`` (None
    when the user has no contact: no name known yet); return the row."""
    fields = {name: row.pop(f"contact_{name}") for name in CONTACT_FIELDS}
    row["contact"] = fields if fields["source"] is not None else None
    return row


def split_page(rows: list[Row], limit: int, id_column: str) -> tuple[list[Row], SortKey | None]:
    """Return the first ``limit`` of ``rows`` (fetched with ``limit + 1``) without their
    ``sort_us`` column, and the sort key of the last one when more rows follow."""
    page = rows[:limit]
    after = (page[-1]["sort_us"], str(page[-1][id_column])) if len(rows) > limit and page else None
    for r in page:
        del r["sort_us"]
    return page, after
