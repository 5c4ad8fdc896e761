-- Materializer support: edit numbers on event rows, the per-message view with edits and
-- reactions applied (whatever order they arrived in), and the edit lookup index.
-- Applied with search_path set to the target schema.

-- An edit's num_edit as the reference fold reads it (schemas.fold.edit_number), computed
-- by the materializer at insert time; NULL for every other kind.
ALTER TABLE events ADD COLUMN num_edit numeric;

CREATE INDEX events_target_idx ON events (page_id, mid, kind) WHERE mid IS NOT NULL;

-- One row per stored message with its effective text (the edit with the greatest
-- (num_edit, event_id) for its mid wins) and the current reaction of each side
-- (the latest react/unreact by (occurred_at, event_id)). A view, so an edit or reaction
-- stored before its message applies as soon as the message is stored.
CREATE VIEW messages AS
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
        ORDER BY COALESCE(r.direction, 'inbound'), r.occurred_at DESC,
                 r.event_id COLLATE "C" DESC
    ) AS latest
    WHERE latest.action IS DISTINCT FROM 'unreact'
) AS re ON true
WHERE m.kind = 'message';
