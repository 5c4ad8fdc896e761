-- A message's edits and reactions are found by (page, mid, kind), whatever the size of
-- its conversation. The planner takes `page_id = x AND psid = y` for one row (it
-- multiplies the two columns' selectivities as if they were independent, and extended
-- statistics do not apply to a lateral join's parameters), so for these lookups it chose
-- events_conversation_idx and read every event of the conversation once per message
-- shown: on a 50,000,000-event database, 32 ms for a conversation's last 50 messages, and
-- the materializer's fold of the last message's text read the database from disk at
-- 500-600 MB/s (docs/performance.md, "The read path"). The psid guard is now compared in
-- "C" (the same equality: both collations are deterministic), which no index on psid
-- serves, so the lookup goes through events_target_idx (page_id, mid, kind).
-- consumers/materializer/statements.py does the same in the fold.
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
      AND e.psid = m.psid COLLATE "C" AND m.mid <> ''
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
          AND r.psid = m.psid COLLATE "C"
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
