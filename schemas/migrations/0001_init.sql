-- convsync projection: events, conversations, consumer offsets, crawl state.
-- Applied with search_path set to the target schema (default "convsync").

CREATE TABLE events (
    event_id        text        PRIMARY KEY,
    page_id         text        NOT NULL,
    psid            text        NOT NULL,
    kind            text        NOT NULL,
    mid             text,
    occurred_at     timestamptz NOT NULL,
    direction       text        CHECK (direction IN ('inbound', 'outbound')),
    text            text,
    watermark       timestamptz,
    thread_id       text,
    source          text        NOT NULL CHECK (source IN ('webhook', 'crawler')),
    attrs           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    payload         jsonb       NOT NULL,
    topic           text        NOT NULL,
    "partition"     integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    inserted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_conversation_idx ON events (page_id, psid, occurred_at);
CREATE INDEX events_mid_idx ON events (mid) WHERE mid IS NOT NULL;

CREATE TABLE conversations (
    page_id              text        NOT NULL,
    psid                 text        NOT NULL,
    thread_id            text,
    first_message_at     timestamptz,
    last_message_at      timestamptz,
    message_count        bigint      NOT NULL DEFAULT 0,
    last_message_text    text,
    last_message_event   text,
    last_inbound_at      timestamptz,
    last_outbound_at     timestamptz,
    needs_reply          boolean     NOT NULL DEFAULT false,
    read_watermark       timestamptz,
    delivered_watermark  timestamptz,
    version              bigint      NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (page_id, psid)
);
CREATE INDEX conversations_needs_reply_idx ON conversations (page_id, last_inbound_at)
    WHERE needs_reply;

CREATE TABLE consumer_offsets (
    "group"      text    NOT NULL,
    topic        text    NOT NULL,
    "partition"  integer NOT NULL,
    next_offset  bigint  NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("group", topic, "partition")
);

CREATE TABLE crawl_state (
    page_id                text        PRIMARY KEY,
    status                 text        NOT NULL DEFAULT 'queued'
                                       CHECK (status IN ('queued', 'running', 'done', 'failed')),
    crawl_id               text,
    full_crawl             boolean     NOT NULL DEFAULT false,
    conversations_cursor   text,
    since_watermark        timestamptz,
    last_completed_at      timestamptz,
    conversations_fetched  bigint      NOT NULL DEFAULT 0,
    messages_fetched       bigint      NOT NULL DEFAULT 0,
    api_calls              bigint      NOT NULL DEFAULT 0,
    throttle_waits         bigint      NOT NULL DEFAULT 0,
    skipped                bigint      NOT NULL DEFAULT 0,
    last_error             text,
    started_at             timestamptz,
    finished_at            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
