"""The named SQL statements of one materializer batch (run with search_path = schema)."""

from __future__ import annotations

from typing import Final

from psycopg import sql

# Session-level scratch table; ON COMMIT DELETE ROWS empties it at every commit. One row
# per conversation of the batch: what its events add (aggregated in Python by
# folding.fold_batch, times in ms since the epoch; counts from new events only, times and
# the greatest thread id from every copy), whether the last message's text must be
# read again (a new edit, or a stored message or edit whose merged text changed), and
# the text and mid of the batch's last message (its row as this batch leaves it).
CREATE_SCRATCH: Final = sql.SQL(
    """
    CREATE TEMP TABLE IF NOT EXISTS touched (
        page_id text NOT NULL, psid text NOT NULL, thread_id text,
        n_msg integer NOT NULL, first_ms bigint, last_ms bigint, in_ms bigint,
        out_ms bigint, read_ms bigint, deliv_ms bigint, last_event text,
        recheck boolean NOT NULL, platform text NOT NULL, last_text text, last_mid text
    ) ON COMMIT DELETE ROWS
    """
)

# Explicit, because the connection is in autocommit mode and the COMMIT rides at the end
# of the batch's pipeline.
BEGIN: Final = sql.SQL("BEGIN")
COMMIT: Final = sql.SQL("COMMIT")

# Writers of one (schema, topic, partition) queue behind each other: a consumer that lost
# its partitions without noticing (a zombie) cannot interleave with the new owner.
# Locks are taken in partition order so two writers never deadlock.
LOCK_PARTITIONS: Final = sql.SQL(
    """
    SELECT count(pg_advisory_xact_lock(hashtext(current_schema() || '/' || %s), p))
    FROM (SELECT p FROM unnest(%s::integer[]) AS p ORDER BY p) AS ordered
    """
)

# Temp tables have no statistics and are emptied at every commit: without fresh ones the
# planner guesses and joins a small batch against all of `conversations` by a full scan.
# Measured: 2x faster folds for 300-event batches, no loss for 5,000 (docs/materializer.md).
# Below ANALYZE_MIN_ROWS the ANALYZE costs more than a poor plan does.
ANALYZE_MIN_ROWS: Final = 100
# Only the columns the plans depend on (grouping and joins).
ANALYZE_TOUCHED: Final = sql.SQL("ANALYZE touched (page_id, psid)")

# Which of the batch's events are stored already, as (event id, conversation) rows with
# what schemas.copies merges a copy into: the merged fields (time in ms, text,
# direction, thread id, edit number) and the rank of the copy whose other fields the row
# keeps (source, copy digest), and its mid (whose edits the fold reads).
# Run after the partition locks, so no other writer of these partitions can add or
# change one before the writes below. The ids come as one comma-separated string (an
# event id is ev1_ and hex): psycopg's dump of a Python list of 10,000 strings took
# ~10 % of the writer thread. Never prepared (see _Session.write_batch).
EXISTING_EVENTS: Final = sql.SQL(
    """
    SELECT event_id, psid, kind,
           (extract(epoch FROM occurred_at) * 1000)::bigint, text, direction, thread_id,
           num_edit, source, copy_digest, mid
    FROM events WHERE event_id = ANY(string_to_array(%s, ','))
    """
)

# A stored row merged with the batch's copies of it (schemas.copies): the merged fields
# always; the other fields only when a copy of the batch outranks the stored one
# (%(rest)s), else the stored ones stay (they are not read back).
UPDATE_EVENT: Final = sql.SQL(
    """
    UPDATE events SET occurred_at = %(occurred_at)s, direction = %(direction)s,
           text = %(text)s, thread_id = %(thread_id)s, num_edit = %(num_edit)s,
           source = CASE WHEN %(rest)s THEN %(source)s ELSE source END,
           mid = CASE WHEN %(rest)s THEN %(mid)s ELSE mid END,
           watermark = CASE WHEN %(rest)s THEN %(watermark)s ELSE watermark END,
           attrs = CASE WHEN %(rest)s THEN %(attrs)s::jsonb ELSE attrs END,
           payload = CASE WHEN %(rest)s THEN %(payload)s::jsonb ELSE payload END,
           topic = CASE WHEN %(rest)s THEN %(topic)s ELSE topic END,
           "partition" = CASE WHEN %(rest)s THEN %(partition)s ELSE "partition" END,
           "offset" = CASE WHEN %(rest)s THEN %(offset)s ELSE "offset" END,
           copy_digest = CASE WHEN %(rest)s THEN %(copy_digest)s ELSE copy_digest END,
           platform = CASE WHEN %(rest)s THEN %(platform)s ELSE platform END
    WHERE event_id = %(event_id)s AND psid = %(psid)s
    """
)

# The batch's new events straight into ``events`` (no staging copy of the wide rows).
# The columns of an event row, in folding.event_row's order.
EVENT_COLUMNS: Final = (
    "event_id", "page_id", "psid", "kind", "mid", "occurred_at", "direction", "text",
    "watermark", "thread_id", "source", "attrs", "payload", "topic", "partition", "offset",
    "num_edit", "copy_digest", "platform",
)  # fmt: skip

# Both COPYs of a batch are binary: Postgres reads each value with its type's receive
# function instead of parsing text, and the client sends values without escaping them
# (2 us of client CPU per event row against 3.6 for text, datetimes not built:
# docs/performance.md). Binary COPY carries no types: each value's bytes must be what
# its column's receive function reads, so these lists name, per column, the psycopg
# dumper that writes those bytes from what folding.copy_row and the touched rows hold:
# ``timestamptz`` is an int8 of microseconds since 2000-01-01 (folding.pg_time),
# ``jsonb`` is a version byte 1 and the JSON text (a str starting with "\x01").
# tests/consumers/test_copy_types.py checks them against a migrated schema's columns.
EVENT_COPY_TYPES: Final = (
    "text", "text", "text", "text", "text", "int8", "text", "text",
    "int8", "text", "text", "text", "text", "text", "int4", "int8",
    "numeric", "text", "text",
)  # fmt: skip

COPY_EVENTS: Final = sql.SQL("COPY events ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in EVENT_COLUMNS)
)

TOUCHED_COLUMNS: Final = (
    "page_id", "psid", "thread_id", "n_msg", "first_ms", "last_ms", "in_ms", "out_ms",
    "read_ms", "deliv_ms", "last_event", "recheck", "platform", "last_text", "last_mid",
)  # fmt: skip
TOUCHED_COPY_TYPES: Final = (
    "text", "text", "text", "int4", "int8", "int8", "int8", "int8",
    "int8", "int8", "text", "bool", "text", "text", "text",
)  # fmt: skip

COPY_TOUCHED: Final = sql.SQL("COPY touched ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in TOUCHED_COLUMNS)
)

# The fold of schemas/fold.py, set-based: merge what the batch's new events add to each
# conversation (``touched``) with the stored row by max/min/sum, learn thread ids from
# every copy in the batch (duplicates included), recompute the last message's edited text
# only where the last message, its stored copy or its edits may have changed, and write
# only rows that really change (so a duplicate-only batch bumps no version). When the
# last message is the batch's own, its text comes from ``touched`` (fold_batch knows the
# row it leaves) and only its edits are read: one index probe less per conversation, a
# fifth of the fold's time (docs/performance.md). Text
# comparisons use "C" (code point) order, which is Python's str order. The last message's
# edit is found by (page, mid, kind) in events_target_idx; its psid is compared in "C"
# (the same equality) so that no index on psid can serve it: the planner, which takes
# (page_id, psid) for one row, would otherwise read the conversation's every event through
# events_conversation_idx for each lookup (docs/performance.md, "The read path").
FOLD_CONVERSATIONS: Final = sql.SQL(
    """
    WITH a AS (
        SELECT page_id, psid, thread_id, n_msg, last_event, recheck, platform, last_text,
               last_mid,
               to_timestamp(0) + first_ms * interval '1 millisecond' AS first_at,
               to_timestamp(0) + last_ms * interval '1 millisecond' AS last_at,
               to_timestamp(0) + in_ms * interval '1 millisecond' AS in_at,
               to_timestamp(0) + out_ms * interval '1 millisecond' AS out_at,
               to_timestamp(0) + read_ms * interval '1 millisecond' AS read_wm,
               to_timestamp(0) + deliv_ms * interval '1 millisecond' AS deliv_wm
        FROM touched
    ),
    merged AS (
        SELECT a.page_id, a.psid,
               -- Of the two, instagram ('i' < 'm'): a page is one platform, and the
               -- least is the same whatever order its events come in.
               LEAST(c.platform, a.platform) AS platform,
               GREATEST(c.thread_id COLLATE "C", a.thread_id COLLATE "C") AS thread_id,
               LEAST(c.first_message_at, a.first_at) AS first_message_at,
               GREATEST(c.last_message_at, a.last_at) AS last_message_at,
               COALESCE(c.message_count, 0) + a.n_msg AS message_count,
               CASE WHEN a.last_event IS NOT NULL
                         AND (c.last_message_event IS NULL
                              OR a.last_at > c.last_message_at
                              OR (a.last_at = c.last_message_at
                                  AND a.last_event COLLATE "C"
                                      > c.last_message_event COLLATE "C"))
                    THEN a.last_event ELSE c.last_message_event END AS last_message_event,
               c.last_message_event AS old_last_event,
               c.last_message_text AS old_text,
               a.recheck, a.last_event AS batch_event, a.last_text AS batch_text,
               a.last_mid AS batch_mid,
               GREATEST(c.last_inbound_at, a.in_at) AS last_inbound_at,
               GREATEST(c.last_outbound_at, a.out_at) AS last_outbound_at,
               GREATEST(c.read_watermark, a.read_wm) AS read_watermark,
               GREATEST(c.delivered_watermark, a.deliv_wm) AS delivered_watermark
        FROM a
        LEFT JOIN conversations AS c USING (page_id, psid)
    ),
    final AS (
        SELECT m.*,
               CASE WHEN m.last_message_event IS DISTINCT FROM m.old_last_event OR m.recheck
                    THEN (SELECT CASE WHEN ed.event_id IS NULL THEN msg.text ELSE ed.text END
                          FROM (
                              -- The batch's own last message: its row as the batch leaves
                              -- it (folding.fold_batch), not read again.
                              SELECT m.batch_text AS text, m.batch_mid AS mid
                              WHERE m.last_message_event = m.batch_event
                              UNION ALL
                              -- A stored last message (a copy or an edit of it changed).
                              SELECT s.text, s.mid
                              FROM events AS s
                              WHERE m.last_message_event IS DISTINCT FROM m.batch_event
                                AND s.event_id = m.last_message_event AND s.psid = m.psid
                          ) AS msg
                          LEFT JOIN LATERAL (
                              SELECT e.event_id, e.text
                              FROM events AS e
                              WHERE e.kind = 'edit' AND e.page_id = m.page_id
                                AND e.mid = msg.mid AND msg.mid <> ''
                                AND e.psid = m.psid COLLATE "C"
                              ORDER BY e.num_edit DESC, e.event_id COLLATE "C" DESC
                              LIMIT 1
                          ) AS ed ON true)
                    ELSE m.old_text END AS last_message_text
        FROM merged AS m
    )
    INSERT INTO conversations AS c (
        page_id, psid, platform, thread_id, first_message_at, last_message_at, message_count,
        last_message_text, last_message_event, last_inbound_at, last_outbound_at,
        needs_reply, read_watermark, delivered_watermark, version, updated_at)
    SELECT page_id, psid, platform, thread_id, first_message_at, last_message_at,
           message_count, last_message_text, last_message_event, last_inbound_at,
           last_outbound_at,
           COALESCE(last_inbound_at > last_outbound_at, last_inbound_at IS NOT NULL),
           read_watermark, delivered_watermark, 1, now()
    FROM final
    ON CONFLICT (page_id, psid) DO UPDATE SET
        platform = EXCLUDED.platform,
        thread_id = EXCLUDED.thread_id,
        first_message_at = EXCLUDED.first_message_at,
        last_message_at = EXCLUDED.last_message_at,
        message_count = EXCLUDED.message_count,
        last_message_text = EXCLUDED.last_message_text,
        last_message_event = EXCLUDED.last_message_event,
        last_inbound_at = EXCLUDED.last_inbound_at,
        last_outbound_at = EXCLUDED.last_outbound_at,
        needs_reply = EXCLUDED.needs_reply,
        read_watermark = EXCLUDED.read_watermark,
        delivered_watermark = EXCLUDED.delivered_watermark,
        version = c.version + 1,
        updated_at = now()
    WHERE (c.platform, c.thread_id, c.first_message_at, c.last_message_at, c.message_count,
           c.last_message_text, c.last_message_event, c.last_inbound_at,
           c.last_outbound_at, c.needs_reply, c.read_watermark, c.delivered_watermark)
          IS DISTINCT FROM
          (EXCLUDED.platform, EXCLUDED.thread_id, EXCLUDED.first_message_at,
           EXCLUDED.last_message_at,
           EXCLUDED.message_count, EXCLUDED.last_message_text, EXCLUDED.last_message_event,
           EXCLUDED.last_inbound_at, EXCLUDED.last_outbound_at, EXCLUDED.needs_reply,
           EXCLUDED.read_watermark, EXCLUDED.delivered_watermark)
    """
)

# Links between a guest's user_ref and the PSID Meta revealed for it (user_refs): a set,
# so any order of the events that reveal them gives the same rows; first_seen_at (and its
# event) the earliest, ties by event id.
UPSERT_USER_REFS: Final = sql.SQL(
    """
    INSERT INTO user_refs AS u (page_id, user_ref, psid, first_seen_at, event_id)
    SELECT page_id, user_ref, psid, to_timestamp(0) + ms * interval '1 millisecond', event_id
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[])
        AS t(page_id, user_ref, psid, ms, event_id)
    ON CONFLICT (page_id, user_ref, psid) DO UPDATE
        SET first_seen_at = EXCLUDED.first_seen_at, event_id = EXCLUDED.event_id
        WHERE (EXCLUDED.first_seen_at, EXCLUDED.event_id COLLATE "C")
              < (u.first_seen_at, u.event_id COLLATE "C")
    """
)

# Offsets only move forward: a late zombie commit cannot rewind the resume cursor.
UPSERT_OFFSETS: Final = sql.SQL(
    """
    INSERT INTO consumer_offsets AS o ("group", topic, "partition", next_offset)
    SELECT %s, %s, p, n FROM unnest(%s::integer[], %s::bigint[]) AS t(p, n)
    ON CONFLICT ("group", topic, "partition") DO UPDATE
        SET next_offset = EXCLUDED.next_offset, updated_at = now()
        WHERE o.next_offset < EXCLUDED.next_offset
    """
)

LOAD_OFFSETS: Final = sql.SQL(
    """
    SELECT "partition", next_offset FROM consumer_offsets
    WHERE "group" = %s AND topic = %s AND "partition" = ANY(%s::integer[])
    """
)
