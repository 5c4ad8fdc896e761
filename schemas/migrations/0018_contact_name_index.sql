-- convsync: no-transaction
-- A page's conversations by a prefix of their user's name, newest first (admin/lists.py,
-- the `name` filter of GET /pages/{page_id}/conversations), from one narrow table in the
-- list's terms: one row per contact and distinct lowercased name (full name, last name,
-- Instagram username), with the conversation's last_message_at. A prefix is one range of
-- its primary key, read from the index alone (the time is INCLUDEd), sorted, and only the
-- rows of the page of results are joined to their conversations.
--
-- Before (0016: three indexes on contacts OR-ed as bitmaps), every match was joined to its
-- conversation for its time before the first 50 were known: a common prefix ("Mar")
-- matched 6,646 users of the largest page, 37,242 buffers, p99 39-40 ms on the 50,000,000
-- event data set (docs/performance.md, "The read path"). 0016's indexes have no other
-- reader and are dropped.
--
-- Kept like conversation_tag_index (0008): a row trigger on contacts (the crawler writes
-- them, a few rows a statement) rewrites a contact's rows when a name changes, taking the
-- conversation's time as it reads it; statement triggers on conversations (the
-- materializer's batches) move the time of the named ones. A contact without a
-- conversation has rows with no time; the list joins them away. The same window as the
-- tag index's: a contact written while its conversation's first or newest message is
-- being written (both transactions open at once) keeps the time before that message
-- until the conversation's next one, so it is listed lower; it is never missed.
--
-- name_key is compared in "C" (bytes): a prefix is then a plain range of the key, which a
-- generic (prepared) plan can also use. The keys are lowercased by lower() in the
-- database's collation, as the prefix is, so its case rules apply to both.
CREATE TABLE IF NOT EXISTS conversation_name_index (
    page_id          text                 NOT NULL,
    name_key         text COLLATE "C"     NOT NULL,
    psid             text                 NOT NULL,
    last_message_at  timestamptz,
    PRIMARY KEY (page_id, name_key, psid) INCLUDE (last_message_at)
);
CREATE INDEX CONCURRENTLY IF NOT EXISTS conversation_name_index_conversation_idx
    ON conversation_name_index (page_id, psid);

-- The keys of a contact: its names lowercased, each once, empty ones left out (no prefix
-- of at least one character matches them).
CREATE OR REPLACE FUNCTION contact_name_keys(name text, last_name text, username text)
RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT DISTINCT k FROM unnest(ARRAY[lower(name), lower(last_name), lower(username)]) AS k
    WHERE k <> ''
$$;

CREATE OR REPLACE FUNCTION conversation_name_index_contacts() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM conversation_name_index;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM conversation_name_index
        WHERE page_id = OLD.page_id AND psid = OLD.psid;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO conversation_name_index (page_id, name_key, psid, last_message_at)
        SELECT NEW.page_id, k, NEW.psid,
               (SELECT c.last_message_at FROM conversations AS c
                WHERE c.page_id = NEW.page_id AND c.psid = NEW.psid)
        FROM contact_name_keys(NEW.name, NEW.last_name, NEW.username) AS k;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION conversation_name_index_times() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE conversation_name_index SET last_message_at = NULL
        WHERE last_message_at IS NOT NULL;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE conversation_name_index AS x SET last_message_at = NULL
        FROM old_rows AS o
        WHERE x.page_id = o.page_id AND x.psid = o.psid AND x.last_message_at IS NOT NULL;
    ELSE
        UPDATE conversation_name_index AS x SET last_message_at = n.last_message_at
        FROM new_rows AS n
        WHERE x.page_id = n.page_id AND x.psid = n.psid
          AND x.last_message_at IS DISTINCT FROM n.last_message_at;
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'contacts'::regclass
                   AND tgname = 'contacts_name_index_insert') THEN
        LOCK TABLE contacts IN SHARE ROW EXCLUSIVE MODE;
        LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM conversation_name_index;
        INSERT INTO conversation_name_index (page_id, name_key, psid, last_message_at)
        SELECT k.page_id, n.key, k.psid, c.last_message_at
        FROM contacts AS k
        CROSS JOIN LATERAL contact_name_keys(k.name, k.last_name, k.username) AS n(key)
        LEFT JOIN conversations AS c USING (page_id, psid);
        CREATE TRIGGER contacts_name_index_insert
            AFTER INSERT OR DELETE ON contacts
            FOR EACH ROW EXECUTE FUNCTION conversation_name_index_contacts();
        CREATE TRIGGER contacts_name_index_update
            AFTER UPDATE ON contacts
            FOR EACH ROW
            WHEN (OLD.name IS DISTINCT FROM NEW.name
                  OR OLD.last_name IS DISTINCT FROM NEW.last_name
                  OR OLD.username IS DISTINCT FROM NEW.username
                  OR OLD.page_id <> NEW.page_id OR OLD.psid <> NEW.psid)
            EXECUTE FUNCTION conversation_name_index_contacts();
        CREATE TRIGGER contacts_name_index_truncate
            AFTER TRUNCATE ON contacts
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_name_index_contacts();
        CREATE TRIGGER conversations_name_index_update
            AFTER UPDATE ON conversations REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_name_index_times();
        CREATE TRIGGER conversations_name_index_insert
            AFTER INSERT ON conversations REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_name_index_times();
        CREATE TRIGGER conversations_name_index_delete
            AFTER DELETE ON conversations REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_name_index_times();
        CREATE TRIGGER conversations_name_index_truncate
            AFTER TRUNCATE ON conversations
            FOR EACH STATEMENT EXECUTE FUNCTION conversation_name_index_times();
    END IF;
END
$$;

ANALYZE conversation_name_index;

DROP INDEX CONCURRENTLY IF EXISTS contacts_name_prefix_idx;
DROP INDEX CONCURRENTLY IF EXISTS contacts_last_name_prefix_idx;
DROP INDEX CONCURRENTLY IF EXISTS contacts_username_prefix_idx;
