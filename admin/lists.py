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
# A name's list reads conversation_name_index (migration 0018): one row per contact and
# lowercased name (full name, last name, Instagram username), with the conversation's
# last_message_at. The prefix is one range of its key in "C" (bytes; written as two
# comparisons, so a generic plan takes it too), read from the index alone; a user matched
# by two names is one row after the GROUP BY. The rows come sorted in the list's order and
# are joined one by one until the page is full, so a common prefix (thousands of users on
# a large page) costs a sort of index entries, not a join of each (docs/performance.md,
# "The read path"). A contact without a conversation has no time; the join leaves it out.
_BY_NAME: Final = """(
    SELECT x.page_id, x.psid, x.last_message_at FROM {s}.conversation_name_index AS x
    WHERE x.page_id = %(page)s
      AND x.name_key >= lower(%(name)s) COLLATE "C"
      AND x.name_key < (lower(%(name)s) || chr(1114111)) COLLATE "C"
      AND starts_with(x.name_key, lower(%(name)s) COLLATE "C") {filters}
    GROUP BY x.page_id, x.psid, x.last_message_at
    ORDER BY COALESCE(x.last_message_at, '-infinity'::timestamptz) DESC, x.psid DESC
) AS x
JOIN {s}.conversations AS c USING (page_id, psid)"""
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
    # conversation), and on the conversation.
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
    o = sql.Identifier("x" if f.tag is not None or f.name is not None else "c")
    s = sql.Identifier(schema)
    if f.name is not None:
        params["name"] = f.name
        inner = sql.SQL("\n      ".join(ordered)).format(o=o)
        source = sql.SQL(_BY_NAME).format(s=s, filters=inner)
        outer = on_conversation + ([] if f.tag is None else ["AND %(tag)s = ANY(t.tags)"])
    elif f.tag is None:
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
