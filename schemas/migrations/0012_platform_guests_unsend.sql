-- convsync: no-transaction
-- Instagram next to Messenger, guests without a PSID, unsent messages (issue 26).
-- Runs statement by statement outside a transaction (schemas/migrate.py): every
-- statement is safe to run again after a crash midway, and each waits at most 2 s at a
-- time for its table lock (then tries again), so it never queues writers for long.

-- The inbox of an event and of a conversation: a Facebook page (messenger) or an
-- Instagram account (instagram; page_id is then the account id). Rows stored before are
-- Messenger's. A constant default adds the column without rewriting the table; the
-- checks are added NOT VALID (no scan under the lock) and validated after.
ALTER TABLE events ADD COLUMN IF NOT EXISTS platform text NOT NULL DEFAULT 'messenger';
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS platform text NOT NULL DEFAULT 'messenger';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'events_platform_check'
                   AND conrelid = 'events'::regclass) THEN
        ALTER TABLE events ADD CONSTRAINT events_platform_check
            CHECK (platform IN ('messenger', 'instagram')) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'conversations_platform_check'
                   AND conrelid = 'conversations'::regclass) THEN
        ALTER TABLE conversations ADD CONSTRAINT conversations_platform_check
            CHECK (platform IN ('messenger', 'instagram')) NOT VALID;
    END IF;
END
$$;

ALTER TABLE events VALIDATE CONSTRAINT events_platform_check;
ALTER TABLE conversations VALIDATE CONSTRAINT conversations_platform_check;

-- A guest of the checkbox or chat plugin is the conversation (page_id, 'user_ref:<ref>')
-- until Meta names the same person by a PSID: an item that carries both (an opt-in of a
-- known user, a message whose sender has an id and a user_ref) records the link here, so
-- a reader can join the guest's conversation with the PSID's. Written by the
-- materializer with the events that reveal it; the set of links (a link is a fact, kept
-- whatever the order its events arrive in), first_seen_at the earliest of them.
CREATE TABLE IF NOT EXISTS user_refs (
    page_id        text        NOT NULL,
    user_ref       text        NOT NULL,
    psid           text        NOT NULL,
    first_seen_at  timestamptz NOT NULL,
    event_id       text        NOT NULL,
    PRIMARY KEY (page_id, user_ref, psid)
);
CREATE INDEX CONCURRENTLY IF NOT EXISTS user_refs_psid_idx ON user_refs (page_id, psid);

-- Unsent messages (Instagram's message.is_deleted, kind 'unsend', same mid): the message
-- stays in `events` and in the log; `messages.deleted_at` is the time of its earliest
-- unsend (NULL while none is stored), whatever order the two arrive in. `platform` is the
-- message's. Columns are added at the end (CREATE OR REPLACE VIEW keeps the others).
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
    COALESCE(re.reactions, '{}'::jsonb) AS reactions,
    m.platform,
    un.deleted_at
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
LEFT JOIN LATERAL (
    SELECT min(u.occurred_at) AS deleted_at
    FROM events AS u
    WHERE u.kind = 'unsend' AND u.page_id = m.page_id AND u.mid = m.mid AND m.mid <> ''
) AS un ON true
WHERE m.kind = 'message';
