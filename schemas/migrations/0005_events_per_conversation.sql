-- convsync: no-transaction
-- One events row per (event id, conversation): copies of one event id that name another
-- user are facts of that conversation (schemas/fold.py), each row the merge of that
-- conversation's copies (schemas/copies.py). The primary key moves from (event_id) to
-- (event_id, psid) without blocking writes: the unique index is built CONCURRENTLY, then
-- it becomes the primary key under its own name (a short ACCESS EXCLUSIVE lock, no
-- rebuild; the name stays, so a retry finds the index and skips the build).
-- Runs statement by statement outside a transaction (schemas/migrate.py); every
-- statement is safe to run again after a crash midway, and the ALTERs wait at most 2 s
-- at a time for their lock (then try again), so they never queue writers for long.

-- The copy_digest of the copy whose source, payload and attrs the row keeps
-- (schemas.copies.copy_digest). NULL for rows stored before: any copy of the same
-- source outranks them.
ALTER TABLE events ADD COLUMN IF NOT EXISTS copy_digest text;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS events_event_psid_pkey ON events (event_id, psid);

DO $$
BEGIN
    IF (SELECT array_length(conkey, 1) FROM pg_constraint
        WHERE conrelid = 'events'::regclass AND contype = 'p') = 1 THEN
        ALTER TABLE events
            DROP CONSTRAINT events_pkey,
            ADD CONSTRAINT events_event_psid_pkey PRIMARY KEY USING INDEX events_event_psid_pkey;
    END IF;
END
$$;

-- Reactions apply to the message of their own conversation, like edits (a reaction's id
-- has its psid, a message's has not).
CREATE OR REPLACE VIEW messages AS
SELECT
    m.event_id,
    m.page_id,
    m.psid,
    m.mid,
    m.occurred_at,
    m.direction,
    m.thread_id,
    m.text AS original_text,
    CASE WHEN ed.event_id IS NULL THEN m.text ELSE ed.text END AS text,
    ed.num_edit AS edit_number,
    COALESCE(re.reactions, '{}'::jsonb) AS reactions
FROM events AS m
LEFT JOIN LATERAL (
    SELECT e.event_id, e.text, e.num_edit
    FROM events AS e
    WHERE e.kind = 'edit' AND e.page_id = m.page_id AND e.mid = m.mid
      AND e.psid = m.psid AND m.mid <> ''
    ORDER BY e.num_edit DESC, e.event_id COLLATE "C" DESC
    LIMIT 1
) AS ed ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(latest.side, latest.emoji) AS reactions
    FROM (
        SELECT DISTINCT ON (COALESCE(r.direction, 'inbound'))
            COALESCE(r.direction, 'inbound') AS side,
            r.attrs ->> 'action' AS action,
            r.attrs ->> 'emoji' AS emoji
        FROM events AS r
        WHERE r.kind = 'reaction' AND r.page_id = m.page_id AND r.mid = m.mid
          AND r.psid = m.psid
        ORDER BY COALESCE(r.direction, 'inbound'), r.occurred_at DESC,
                 r.event_id COLLATE "C" DESC
    ) AS latest
    WHERE latest.action IS DISTINCT FROM 'unreact'
) AS re ON true
WHERE m.kind = 'message';
