-- Crawler progress: more crawl_state columns and the sync history (one row per request).
-- Applied with search_path set to the target schema.

ALTER TABLE crawl_state
    ADD COLUMN step_seq               bigint           NOT NULL DEFAULT 0,
    ADD COLUMN conversations_listed   bigint           NOT NULL DEFAULT 0,
    ADD COLUMN messages_expected      bigint           NOT NULL DEFAULT 0,
    ADD COLUMN messages_no_details    bigint           NOT NULL DEFAULT 0,
    ADD COLUMN retries                bigint           NOT NULL DEFAULT 0,
    ADD COLUMN throttle_seconds       double precision NOT NULL DEFAULT 0,
    ADD COLUMN skipped_reasons        jsonb            NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN joined_requests        bigint           NOT NULL DEFAULT 0;

CREATE TABLE crawl_history (
    crawl_id               text        PRIMARY KEY,
    page_id                text        NOT NULL,
    full_crawl             boolean     NOT NULL,
    status                 text        NOT NULL
                                       CHECK (status IN ('queued', 'running', 'done',
                                                         'failed', 'joined')),
    joined_crawl_id        text,
    requested_at           timestamptz NOT NULL,
    started_at             timestamptz,
    finished_at            timestamptz,
    step_seq               bigint      NOT NULL DEFAULT 0,
    conversations_done     bigint      NOT NULL DEFAULT 0,
    messages_fetched       bigint      NOT NULL DEFAULT 0,
    messages_no_details    bigint      NOT NULL DEFAULT 0,
    api_calls              bigint      NOT NULL DEFAULT 0,
    retries                bigint      NOT NULL DEFAULT 0,
    throttle_waits         bigint      NOT NULL DEFAULT 0,
    throttle_seconds       double precision NOT NULL DEFAULT 0,
    skipped                bigint      NOT NULL DEFAULT 0,
    skipped_reasons        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_error             text,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crawl_history_page_idx ON crawl_history (page_id, requested_at DESC);
