-- Resumable crawls, cancelled crawls, and the sync history's per-crawl progress
-- (producers/crawler/resume.py, producers/crawler/retry.py, admin/crawls.py).
-- Applied with search_path set to the target schema.

-- A crawl cancelled through DELETE /admin/crawls/{crawl_id}. ('paused' is allowed too,
-- for a crawl waiting for its page's token: it keeps its cursor like a failed one.)
ALTER TABLE crawl_state DROP CONSTRAINT IF EXISTS crawl_state_status_check;
ALTER TABLE crawl_state ADD CONSTRAINT crawl_state_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'paused'));
ALTER TABLE crawl_history DROP CONSTRAINT IF EXISTS crawl_history_status_check;
ALTER TABLE crawl_history ADD CONSTRAINT crawl_history_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'joined', 'cancelled', 'paused'));

ALTER TABLE crawl_history
    -- 1 for a crawl started afresh; the attempt of the failed crawl it resumes + 1.
    ADD COLUMN attempt               integer NOT NULL DEFAULT 1,
    -- The failed crawl this one continues from (its cursor), and the reverse link.
    ADD COLUMN resumed_from          text,
    ADD COLUMN resumed_by            text,
    -- A failed crawl's cursor: {"full": bool, "since": ms | null, "step": CrawlStep | null}.
    ADD COLUMN resume                jsonb,
    -- The conversation a failed crawl was reading, and in how many crawls in a row
    -- reading it failed (at CONVSYNC_CRAWL_CONVERSATION_FAILURES it is skipped).
    ADD COLUMN failed_thread         text,
    ADD COLUMN thread_failures       integer NOT NULL DEFAULT 0,
    -- The thread ids of the conversations skipped (at most 100 kept; `skipped` counts).
    ADD COLUMN skipped_threads       jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN conversations_listed  bigint  NOT NULL DEFAULT 0,
    ADD COLUMN messages_expected     bigint  NOT NULL DEFAULT 0;

-- The automatic retry's look for failed crawls nobody resumed yet.
CREATE INDEX crawl_history_unresumed_idx ON crawl_history (finished_at)
    WHERE status = 'failed' AND resumed_by IS NULL;
