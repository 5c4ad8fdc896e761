-- convsync: no-transaction
-- The read path at a large customer's size: indexes and two small derived tables, each
-- with its measured before and after in docs/performance.md ("The read path"). Runs
-- statement by statement outside a transaction (schemas/migrate.py): the indexes are
-- built CONCURRENTLY, so a live materializer keeps writing meanwhile, and every
-- statement is safe to run again after a crash midway (IF NOT EXISTS, OR REPLACE, DO
-- blocks that check first). A derived table is filled and its triggers created in one
-- DO block (one transaction, conversations locked against writes for that long), so no
-- change falls between the fill and the first trigger.

-- 1. A conversation's messages, newest first, one keyset page at a time (admin/lists.py):
-- only messages (60 % of the events), in the list's order including the tie break, so
-- the 50 before a cursor are the next 50 entries (by events_conversation_idx, 50
-- messages cost ~85 entries, each checked on its heap page for its kind). Without the
-- columns the view returns (INCLUDE): reading them from the index instead of the heap
-- measured no faster, for ~90 bytes more per event.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_messages_idx
    ON events (page_id, psid, occurred_at, event_id COLLATE "C")
    WHERE kind = 'message';

-- 2. The edits and reactions of a conversation's messages, found by conversation first:
-- the messages view looks one up per message shown, and by (page, mid) alone those
-- lookups land on leaf pages all over the largest index of the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_message_changes_idx
    ON events (page_id, psid, mid, kind)
    WHERE kind IN ('edit', 'reaction');

-- 3. The dashboard's recent syncs, newest first over every page.
CREATE INDEX CONCURRENTLY IF NOT EXISTS crawl_history_requested_idx
    ON crawl_history (requested_at);

-- 4. Needs-reply conversations per page, for the dashboard: counting them at every poll
-- read most of `conversations`. Kept by statement-level triggers from the transition
-- tables (one statement per materializer batch), pages locked in page order.
CREATE TABLE IF NOT EXISTS needs_reply_counts (
    page_id        text   PRIMARY KEY,
    conversations  bigint NOT NULL
);

CREATE OR REPLACE FUNCTION needs_reply_counts_apply() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM needs_reply_counts;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO needs_reply_counts AS k (page_id, conversations)
        SELECT page_id, count(*) FROM new_rows WHERE needs_reply
        GROUP BY page_id ORDER BY page_id
        ON CONFLICT (page_id) DO UPDATE SET conversations = k.conversations + EXCLUDED.conversations;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE needs_reply_counts AS k SET conversations = k.conversations - d.n
        FROM (SELECT page_id, count(*) AS n FROM old_rows WHERE needs_reply
              GROUP BY page_id) AS d
        WHERE k.page_id = d.page_id;
    ELSE
        INSERT INTO needs_reply_counts AS k (page_id, conversations)
        SELECT page_id, sum(d) FROM (
            SELECT page_id, 1 AS d FROM new_rows WHERE needs_reply
            UNION ALL
            SELECT page_id, -1 FROM old_rows WHERE needs_reply
        ) AS changes
        GROUP BY page_id HAVING sum(d) <> 0 ORDER BY page_id
        ON CONFLICT (page_id) DO UPDATE SET conversations = k.conversations + EXCLUDED.conversations;
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'conversations'::regclass
                   AND tgname = 'conversations_needs_reply_counts_insert') THEN
        LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM needs_reply_counts;
        INSERT INTO needs_reply_counts (page_id, conversations)
        SELECT page_id, count(*) FROM conversations WHERE needs_reply GROUP BY page_id;
        CREATE TRIGGER conversations_needs_reply_counts_insert
            AFTER INSERT ON conversations REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION needs_reply_counts_apply();
        CREATE TRIGGER conversations_needs_reply_counts_update
            AFTER UPDATE ON conversations REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION needs_reply_counts_apply();
        CREATE TRIGGER conversations_needs_reply_counts_delete
            AFTER DELETE ON conversations REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION needs_reply_counts_apply();
        CREATE TRIGGER conversations_needs_reply_counts_truncate
            AFTER TRUNCATE ON conversations
            FOR EACH STATEMENT EXECUTE FUNCTION needs_reply_counts_apply();
    END IF;
END
$$;

-- 5. A page's conversations with a tag, newest first: one row per (conversation, tag)
-- with the conversation's last_message_at, in the list's order. Tags live in an array
-- (conversation_tags), which no index can order by time; without this a tag's list read
-- every tagged conversation of the page, then sorted them. Kept by a row trigger on
-- conversation_tags (people and the auto-clear change tags, a few rows at a time) and
-- statement triggers on conversations (move the time of the tagged ones in a batch).
CREATE TABLE IF NOT EXISTS conversation_tag_index (
    page_id          text        NOT NULL,
    tag              text        NOT NULL,
    psid             text        NOT NULL,
    last_message_at  timestamptz,
    PRIMARY KEY (page_id, tag, psid)
);
CREATE INDEX CONCURRENTLY IF NOT EXISTS conversation_tag_index_recent_idx
    ON conversation_tag_index
    (page_id, tag, (COALESCE(last_message_at, '-infinity'::timestamptz)), psid);
CREATE INDEX CONCURRENTLY IF NOT EXISTS conversation_tag_index_conversation_idx
    ON conversation_tag_index (page_id, psid);

CREATE OR REPLACE FUNCTION conversation_tag_index_tags() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM conversation_tag_index
        WHERE page_id = OLD.page_id AND psid = OLD.psid;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO conversation_tag_index (page_id, tag, psid, last_message_at)
        SELECT NEW.page_id, tag, NEW.psid,
               (SELECT c.last_message_at FROM conversations AS c
                WHERE c.page_id = NEW.page_id AND c.psid = NEW.psid)
        FROM unnest(NEW.tags) AS tag
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION conversation_tag_index_times() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE conversation_tag_index SET last_message_at = NULL
        WHERE last_message_at IS NOT NULL;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE conversation_tag_index AS x SET last_message_at = NULL
        FROM old_rows AS o
        WHERE x.page_id = o.page_id AND x.psid = o.psid AND x.last_message_at IS NOT NULL;
    ELSE
        UPDATE conversation_tag_index AS x SET last_message_at = n.last_message_at
        FROM new_rows AS n
        WHERE x.page_id = n.page_id AND x.psid = n.psid
          AND x.last_message_at IS DISTINCT FROM n.last_message_at;
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'conversation_tags'::regclass
                   AND tgname = 'conversation_tags_index') THEN
        LOCK TABLE conversation_tags IN SHARE ROW EXCLUSIVE MODE;
        LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM conversation_tag_index;
        INSERT INTO conversation_tag_index (page_id, tag, psid, last_message_at)
        SELECT t.page_id, x.tag, t.psid, c.last_message_at
        FROM conversation_tags AS t
        CROSS JOIN LATERAL unnest(t.tags) AS x(tag)
        LEFT JOIN conversations AS c USING (page_id, psid)
        ON CONFLICT DO NOTHING;
        CREATE TRIGGER conversation_tags_index
            AFTER INSERT OR UPDATE OR DELETE ON conversation_tags
            FOR EACH ROW EXECUTE FUNCTION conversation_tag_index_tags();
        CREATE TRIGGER conversations_tag_index_update
            AFTER UPDATE ON conversations REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_tag_index_times();
        CREATE TRIGGER conversations_tag_index_insert
            AFTER INSERT ON conversations REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_tag_index_times();
        CREATE TRIGGER conversations_tag_index_delete
            AFTER DELETE ON conversations REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_tag_index_times();
        CREATE TRIGGER conversations_tag_index_truncate
            AFTER TRUNCATE ON conversations
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_tag_index_times();
    END IF;
END
$$;

-- 6. Per-page sync statistics kept as crawls are written: the view of 0004 aggregated
-- every crawl ever recorded (2,000 pages x ~8 crawls: ~25 ms) for every dashboard poll
-- and `convsync status`. A crawl's progress writes (the frequent ones) move its counters
-- by their difference; a crawl that is added, removed or changes status or times has its
-- page recomputed from that page's crawls, as the view computed them. A lock per page
-- orders the writers of one page's statistics.
CREATE TABLE IF NOT EXISTS sync_statistics_pages (
    page_id               text        PRIMARY KEY,
    crawls                bigint      NOT NULL,
    succeeded             bigint      NOT NULL,
    failed                bigint      NOT NULL,
    joined                bigint      NOT NULL,
    active                bigint      NOT NULL,
    conversations_done    bigint      NOT NULL,
    messages_fetched      bigint      NOT NULL,
    api_calls             bigint      NOT NULL,
    throttle_waits        bigint      NOT NULL,
    done_seconds          numeric,
    done_timed            bigint      NOT NULL,
    max_duration_seconds  double precision,
    last_success_at       timestamptz,
    last_failure_at       timestamptz,
    last_error            text
);

CREATE OR REPLACE FUNCTION sync_statistics_recompute(p text) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT AS $$
    DELETE FROM sync_statistics_pages WHERE page_id = p;
    INSERT INTO sync_statistics_pages
    SELECT
        h.page_id,
        count(*),
        count(*) FILTER (WHERE h.status = 'done'),
        count(*) FILTER (WHERE h.status = 'failed'),
        count(*) FILTER (WHERE h.status = 'joined'),
        count(*) FILTER (WHERE h.status IN ('queued', 'running')),
        COALESCE(sum(h.conversations_done), 0)::bigint,
        COALESCE(sum(h.messages_fetched), 0)::bigint,
        COALESCE(sum(h.api_calls), 0)::bigint,
        COALESCE(sum(h.throttle_waits), 0)::bigint,
        sum(EXTRACT(EPOCH FROM (h.finished_at - h.started_at))) FILTER (WHERE h.status = 'done'),
        count(h.finished_at - h.started_at) FILTER (WHERE h.status = 'done'),
        max(EXTRACT(EPOCH FROM (h.finished_at - h.started_at)))
            FILTER (WHERE h.status = 'done')::double precision,
        max(h.finished_at) FILTER (WHERE h.status = 'done'),
        max(h.finished_at) FILTER (WHERE h.status = 'failed'),
        (SELECT f.last_error FROM crawl_history AS f
         WHERE f.page_id = p AND f.status = 'failed'
         ORDER BY f.finished_at DESC NULLS LAST, f.crawl_id LIMIT 1)
    FROM crawl_history AS h
    WHERE h.page_id = p
    GROUP BY h.page_id;
$$;

CREATE OR REPLACE FUNCTION sync_statistics_apply() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM sync_statistics_pages;
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_advisory_xact_lock(hashtext('convsync-sync-statistics:' || OLD.page_id));
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.page_id <> OLD.page_id) THEN
        PERFORM pg_advisory_xact_lock(hashtext('convsync-sync-statistics:' || NEW.page_id));
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.page_id = OLD.page_id AND NEW.status = OLD.status
       AND NEW.started_at IS NOT DISTINCT FROM OLD.started_at
       AND NEW.finished_at IS NOT DISTINCT FROM OLD.finished_at
       AND NEW.last_error IS NOT DISTINCT FROM OLD.last_error THEN
        UPDATE sync_statistics_pages SET
            conversations_done = conversations_done
                + (NEW.conversations_done - OLD.conversations_done),
            messages_fetched = messages_fetched + (NEW.messages_fetched - OLD.messages_fetched),
            api_calls = api_calls + (NEW.api_calls - OLD.api_calls),
            throttle_waits = throttle_waits + (NEW.throttle_waits - OLD.throttle_waits)
        WHERE page_id = NEW.page_id;
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM sync_statistics_recompute(OLD.page_id);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.page_id <> OLD.page_id) THEN
        PERFORM sync_statistics_recompute(NEW.page_id);
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'crawl_history'::regclass
                   AND tgname = 'crawl_history_statistics') THEN
        LOCK TABLE crawl_history IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM sync_statistics_pages;
        PERFORM sync_statistics_recompute(page_id)
        FROM (SELECT DISTINCT page_id FROM crawl_history) AS pages;
        CREATE TRIGGER crawl_history_statistics
            AFTER INSERT OR UPDATE OR DELETE ON crawl_history
            FOR EACH ROW EXECUTE FUNCTION sync_statistics_apply();
        CREATE TRIGGER crawl_history_statistics_truncate
            AFTER TRUNCATE ON crawl_history
            FOR EACH STATEMENT EXECUTE FUNCTION sync_statistics_apply();
    END IF;
END
$$;

-- The view keeps its columns (the read contract) and reads the kept statistics.
CREATE OR REPLACE VIEW sync_statistics AS
SELECT
    page_id, crawls, succeeded, failed, joined, active, conversations_done,
    messages_fetched, api_calls, throttle_waits,
    (done_seconds / NULLIF(done_timed, 0))::double precision AS avg_duration_seconds,
    max_duration_seconds, last_success_at, last_failure_at, last_error
FROM sync_statistics_pages;
