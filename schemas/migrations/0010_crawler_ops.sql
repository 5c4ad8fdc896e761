-- convsync: no-transaction
-- The crawler's operations state: the app-wide Graph usage every worker shares
-- (producers/crawler/app_usage.py), the pages whose webhooks went silent
-- (producers/crawler/reconcile.py), and an index that lets the silence check read a
-- page's recent events without scanning its history. Runs statement by statement
-- (schemas/migrate.py), so the index is built CONCURRENTLY without blocking the
-- materializer's writes; every statement is safe to run again.

-- One row per app: the freshest X-App-Usage any worker saw, and until when Meta asked
-- the whole app to wait.
CREATE TABLE IF NOT EXISTS app_usage (
    app           text             PRIMARY KEY,
    percent       double precision NOT NULL CHECK (percent >= 0),
    regain_until  timestamptz      NOT NULL DEFAULT 'epoch',
    observed_at   timestamptz      NOT NULL
);

-- One row per page the reconciler looked at: its webhooks are silent while crawls find
-- new messages (silent_since set), what the last check counted, when it ran.
CREATE TABLE IF NOT EXISTS page_health (
    page_id               text        PRIMARY KEY,
    silent_since          timestamptz,
    crawl_found_messages  bigint      NOT NULL DEFAULT 0,
    webhook_events        bigint      NOT NULL DEFAULT 0,
    checked_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX CONCURRENTLY IF NOT EXISTS events_page_inserted_idx ON events (page_id, inserted_at);
