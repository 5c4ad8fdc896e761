-- Media archive: the archiver's own table (one row per attachment it was told about) and
-- the `attachments` projection, a view over `events` joined with it. Nothing here is
-- written by the materializer: `events` gets no column, index or trigger.
-- Applied with search_path set to the target schema.

-- The attachments of an event's attrs as a JSON array: the webhook mapping stores a list
-- of summaries, the crawler Graph's `attachments.data` list (or the object itself when
-- it had no `data`); anything else has none.
CREATE FUNCTION attachment_list(attachments jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(attachments)
        WHEN 'array' THEN attachments
        WHEN 'object' THEN jsonb_build_array(attachments)
        ELSE '[]'::jsonb
    END
$$;

-- The first string among the places an attachment's URL is kept: a webhook summary's
-- `url` (or a raw item's `URL`, `payload.url`), Graph's `image_data.url`,
-- `video_data.url` and `file_url`. consumers/archiver/extract.py applies the same rule
-- (a test holds the two together).
CREATE FUNCTION attachment_url(item jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT v #>> '{}'
    FROM (VALUES (1, item -> 'url'), (2, item -> 'URL'), (3, item -> 'payload' -> 'url'),
                 (4, item -> 'payload' -> 'URL'), (5, item -> 'image_data' -> 'url'),
                 (6, item -> 'video_data' -> 'url'), (7, item -> 'file_url')) AS c(n, v)
    WHERE jsonb_typeof(item) = 'object' AND jsonb_typeof(v) = 'string' AND v #>> '{}' <> ''
    ORDER BY n
    LIMIT 1
$$;

-- The attachment's type: the summary's `type`, else what Graph's fields say it is.
CREATE FUNCTION attachment_type(item jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN jsonb_typeof(item) <> 'object' THEN NULL
        WHEN jsonb_typeof(item -> 'type') = 'string' THEN item ->> 'type'
        WHEN jsonb_typeof(item -> 'image_data') = 'object' THEN 'image'
        WHEN jsonb_typeof(item -> 'video_data') = 'object' THEN 'video'
        WHEN jsonb_typeof(item -> 'file_url') = 'string' THEN 'file'
    END
$$;

-- One row per (event, attachment index) the archiver has seen on the events topic.
-- Keyed by (page_id, event_id, psid, idx): one row per stored events row's attachment
-- whether `events` is keyed by event_id or by (event_id, psid), page first like every
-- table. `status`: pending (to fetch; `due_at` says when), stored (the file is on disk
-- under `storage_key` before the row says so) or failed (`error` is the reason).
CREATE TABLE attachment_files (
    page_id       text        NOT NULL,
    event_id      text        NOT NULL,
    psid          text        NOT NULL,
    idx           integer     NOT NULL CHECK (idx >= 0),
    url           text,
    status        text        NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'stored', 'failed')),
    sha256        text        CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size          bigint      CHECK (size >= 0),
    storage_key   text,
    content_type  text,
    attempts      integer     NOT NULL DEFAULT 0,
    due_at        timestamptz NOT NULL DEFAULT now(),
    claimed_at    timestamptz,
    error         text,
    error_detail  text,
    fetched_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (page_id, event_id, psid, idx),
    CHECK (status <> 'stored' OR (sha256 IS NOT NULL AND size IS NOT NULL
                                  AND storage_key IS NOT NULL)),
    CHECK (status <> 'failed' OR error IS NOT NULL)
);
-- The archiver's work queue: what is due and not taken, oldest first.
CREATE INDEX attachment_files_due_idx ON attachment_files (due_at)
    WHERE status = 'pending' AND claimed_at IS NULL;
-- A URL fetched once is not fetched again (the same sticker in many messages, one
-- message under two conversations). Hash: a URL can be longer than a btree entry.
CREATE INDEX attachment_files_stored_url_idx ON attachment_files USING hash (url)
    WHERE status = 'stored';

-- The attachments projection: every attachment of every stored event, with its archive
-- state (NULL status: the archiver has not seen it yet, or does not run).
CREATE VIEW attachments AS
SELECT
    e.event_id,
    e.page_id,
    e.psid,
    e.mid,
    e.occurred_at,
    (a.ord - 1)::integer AS idx,
    attachment_type(a.item) AS type,
    attachment_url(a.item) AS url,
    f.status,
    f.size,
    f.sha256,
    f.storage_key,
    f.content_type,
    f.fetched_at,
    f.error,
    f.error_detail,
    f.attempts,
    f.url AS fetched_url
FROM events AS e
CROSS JOIN LATERAL jsonb_array_elements(attachment_list(e.attrs -> 'attachments'))
    WITH ORDINALITY AS a(item, ord)
LEFT JOIN attachment_files AS f
    ON f.page_id = e.page_id AND f.event_id = e.event_id AND f.psid = e.psid
   AND f.idx = a.ord - 1
WHERE e.attrs ? 'attachments';
