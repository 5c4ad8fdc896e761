-- The pages convsync syncs and their tokens (convsync/pages.py, docs/pages.md): one row
-- per page or Instagram account, added through `PUT /admin/pages/{id}`, `convsync pages
-- add` or, for pages not in the table yet, CONVSYNC_PAGE_TOKENS. The token is stored
-- encrypted (a Fernet token made with CONVSYNC_SECRET_KEY), never in the clear.
-- crawl_history gains the status `paused`: a crawl whose page token stopped working
-- waits there, its continuation kept in `pages.paused_crawl`, until a new token arrives.
-- Applied with search_path set to the target schema.

CREATE TABLE pages (
    page_id            text        PRIMARY KEY CHECK (page_id ~ '^[0-9]{1,64}$'),
    platform           text        NOT NULL DEFAULT 'messenger'
                                   CHECK (platform IN ('messenger', 'instagram')),
    name               text        CHECK (length(name) <= 200),
    -- removed: DELETE /admin/pages; its token is erased, its data stays, and the row
    -- stays so that CONVSYNC_PAGE_TOKENS never brings the page back.
    status             text        NOT NULL DEFAULT 'active'
                                   CHECK (status IN ('active', 'needs_reconnect', 'paused',
                                                     'removed')),
    token_encrypted    bytea       CHECK (status = 'removed' OR token_encrypted IS NOT NULL),
    -- env: from CONVSYNC_PAGE_TOKENS; api: PUT /admin/pages or `convsync pages add`
    token_source       text        NOT NULL CHECK (token_source IN ('env', 'api')),
    token_updated_at   timestamptz NOT NULL DEFAULT now(),
    token_last_success_at timestamptz,
    token_last_error_at   timestamptz,
    token_last_error      text     CHECK (length(token_last_error) <= 1000),
    -- what the person who reads the status is told (the token expired: reconnect ...)
    status_message     text        CHECK (length(status_message) <= 1000),
    subscribed_fields  text[]      NOT NULL DEFAULT '{}',
    -- the continuation of the crawl paused by a token error (a crawl record, JSON);
    -- produced again by the crawler once the page is active with a new token
    paused_crawl       jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX pages_attention_idx ON pages (status) WHERE status <> 'active';

ALTER TABLE crawl_history DROP CONSTRAINT crawl_history_status_check;
ALTER TABLE crawl_history ADD CONSTRAINT crawl_history_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'joined', 'paused'));
ALTER TABLE crawl_state DROP CONSTRAINT crawl_state_status_check;
ALTER TABLE crawl_state ADD CONSTRAINT crawl_state_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'paused'));
