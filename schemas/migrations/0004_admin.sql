-- Admin API support: sync views over the crawl tables, conversation tags (user state kept
-- out of the projection) and the auto-clear of configured tags when the page replies.
-- Applied with search_path set to the target schema.

-- Running or queued crawls with their progress (the old design's active_syncs endpoint).
CREATE VIEW active_syncs AS
SELECT
    s.page_id,
    s.crawl_id,
    s.status,
    s.full_crawl,
    s.started_at,
    s.updated_at,
    s.conversations_listed,
    s.conversations_fetched AS conversations_done,
    s.messages_expected,
    s.messages_fetched,
    s.api_calls,
    s.throttle_waits,
    s.retries,
    s.joined_requests,
    CASE WHEN s.conversations_listed > 0
         THEN LEAST(1.0, s.conversations_fetched::double precision / s.conversations_listed)
    END AS progress,
    EXTRACT(EPOCH FROM (now() - s.started_at))::double precision AS running_seconds
FROM crawl_state AS s
WHERE s.status IN ('queued', 'running');

-- Per page totals over the crawl history (the old design's sync_statistics endpoint).
CREATE VIEW sync_statistics AS
SELECT
    h.page_id,
    count(*) AS crawls,
    count(*) FILTER (WHERE h.status = 'done') AS succeeded,
    count(*) FILTER (WHERE h.status = 'failed') AS failed,
    count(*) FILTER (WHERE h.status = 'joined') AS joined,
    count(*) FILTER (WHERE h.status IN ('queued', 'running')) AS active,
    COALESCE(sum(h.conversations_done), 0)::bigint AS conversations_done,
    COALESCE(sum(h.messages_fetched), 0)::bigint AS messages_fetched,
    COALESCE(sum(h.api_calls), 0)::bigint AS api_calls,
    COALESCE(sum(h.throttle_waits), 0)::bigint AS throttle_waits,
    avg(EXTRACT(EPOCH FROM (h.finished_at - h.started_at)))
        FILTER (WHERE h.status = 'done')::double precision AS avg_duration_seconds,
    max(EXTRACT(EPOCH FROM (h.finished_at - h.started_at)))
        FILTER (WHERE h.status = 'done')::double precision AS max_duration_seconds,
    max(h.finished_at) FILTER (WHERE h.status = 'done') AS last_success_at,
    max(h.finished_at) FILTER (WHERE h.status = 'failed') AS last_failure_at,
    (SELECT f.last_error FROM crawl_history AS f
     WHERE f.page_id = h.page_id AND f.status = 'failed'
     ORDER BY f.finished_at DESC NULLS LAST LIMIT 1) AS last_error
FROM crawl_history AS h
GROUP BY h.page_id;

-- Tags are set by people, not derived from events: a replay rebuilds `conversations`
-- without touching them. `version` is the optimistic-concurrency token of PATCH.
CREATE TABLE conversation_tags (
    page_id     text        NOT NULL,
    psid        text        NOT NULL,
    tags        text[]      NOT NULL DEFAULT '{}',
    version     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (page_id, psid)
);
CREATE INDEX conversation_tags_tags_idx ON conversation_tags USING gin (tags);

-- The tags a page reply clears; the admin app writes CONVSYNC_ADMIN_AUTO_CLEAR_TAGS here
-- at start. The default matches the setting's default.
CREATE TABLE auto_clear_tags (
    tag text PRIMARY KEY
);
INSERT INTO auto_clear_tags (tag) VALUES ('needs_attention');

-- Keyset pagination of a page's conversations by (last_message_at, psid).
CREATE INDEX conversations_recent_idx
    ON conversations (page_id, (COALESCE(last_message_at, '-infinity'::timestamptz)), psid);

-- A reply clears the configured tags when it is newer than the last change of the tags
-- (a backfilled older reply, or a replay, leaves tags set after it alone). Set-based
-- over the statement's transition tables: one UPDATE per materializer batch.
-- SET search_path FROM CURRENT pins the function to this migration's schema.
CREATE FUNCTION clear_tags_on_reply_update() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE conversation_tags AS t
    SET tags = ARRAY(SELECT x FROM unnest(t.tags) AS x
                     WHERE x NOT IN (SELECT tag FROM auto_clear_tags)),
        version = t.version + 1,
        updated_at = now()
    FROM new_rows AS n
    JOIN old_rows AS o USING (page_id, psid)
    WHERE t.page_id = n.page_id AND t.psid = n.psid
      AND n.last_outbound_at > COALESCE(o.last_outbound_at, '-infinity'::timestamptz)
      AND n.last_outbound_at > t.updated_at
      AND t.tags && ARRAY(SELECT tag FROM auto_clear_tags);
    RETURN NULL;
END
$$;

CREATE FUNCTION clear_tags_on_reply_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE conversation_tags AS t
    SET tags = ARRAY(SELECT x FROM unnest(t.tags) AS x
                     WHERE x NOT IN (SELECT tag FROM auto_clear_tags)),
        version = t.version + 1,
        updated_at = now()
    FROM new_rows AS n
    WHERE t.page_id = n.page_id AND t.psid = n.psid
      AND n.last_outbound_at > t.updated_at
      AND t.tags && ARRAY(SELECT tag FROM auto_clear_tags);
    RETURN NULL;
END
$$;

CREATE TRIGGER conversations_reply_clears_tags_update
    AFTER UPDATE ON conversations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION clear_tags_on_reply_update();

CREATE TRIGGER conversations_reply_clears_tags_insert
    AFTER INSERT ON conversations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION clear_tags_on_reply_insert();
