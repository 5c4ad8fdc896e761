-- convsync: no-transaction
-- A page's conversations by a prefix of their user's name, newest first (admin/lists.py,
-- the `name` filter of GET /pages/{page_id}/conversations), from one narrow table in the
-- list's terms. A contact's names (full name, last name, Instagram username), lowercased,
-- are grouped by their first three characters (key3): one row per contact and group, with
-- the group's names and the conversation's last message time (sort_at, -infinity for
-- none). The index on (page, key3, sort_at, psid) holds each group in the list's order, so
-- a prefix of three characters or more is read newest first straight from its group, the
-- users none of whose names start with the whole prefix skipped, and joined to their
-- conversations until the page of results is full; each user is in a group once, so
-- nothing needs to be sorted or made unique. A prefix of one or two characters spans
-- groups: its rows are read from the index, made unique per user and sorted.
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
-- conversation has rows with no time; the list's join leaves them out. The same window as
-- the tag index's: a contact written while its conversation's first or newest message is
-- being written (both transactions open at once) keeps the time before that message
-- until the conversation's next one, so it is listed lower; it is never missed.
--
-- The keys are compared in "C" (bytes), so a prefix is a plain range; they are lowercased
-- by lower() in the database's collation, as the prefix is, so its case rules apply to
-- both.
CREATE TABLE IF NOT EXISTS conversation_name_index (
    page_id  text                NOT NULL,
    psid     text                NOT NULL,
    key3     text COLLATE "C"    NOT NULL,
    names    text[] COLLATE "C"  NOT NULL,
    sort_at  timestamptz         NOT NULL,
    PRIMARY KEY (page_id, psid, key3)
);

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
        INSERT INTO conversation_name_index (page_id, psid, key3, names, sort_at)
        SELECT NEW.page_id, NEW.psid, left(k, 3), array_agg(k ORDER BY k COLLATE "C"),
               COALESCE((SELECT c.last_message_at FROM conversations AS c
                         WHERE c.page_id = NEW.page_id AND c.psid = NEW.psid),
                        '-infinity'::timestamptz)
        FROM contact_name_keys(NEW.name, NEW.last_name, NEW.username) AS k
        GROUP BY left(k, 3);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION conversation_name_index_times() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE conversation_name_index SET sort_at = '-infinity'
        WHERE sort_at <> '-infinity';
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE conversation_name_index AS x SET sort_at = '-infinity'
        FROM old_rows AS o
        WHERE x.page_id = o.page_id AND x.psid = o.psid AND x.sort_at <> '-infinity';
    ELSE
        UPDATE conversation_name_index AS x
        SET sort_at = COALESCE(n.last_message_at, '-infinity')
        FROM new_rows AS n
        WHERE x.page_id = n.page_id AND x.psid = n.psid
          AND x.sort_at <> COALESCE(n.last_message_at, '-infinity');
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
        INSERT INTO conversation_name_index (page_id, psid, key3, names, sort_at)
        SELECT k.page_id, k.psid, left(n.key, 3), array_agg(n.key ORDER BY n.key COLLATE "C"),
               COALESCE(c.last_message_at, '-infinity')
        FROM contacts AS k
        CROSS JOIN LATERAL contact_name_keys(k.name, k.last_name, k.username) AS n(key)
        LEFT JOIN conversations AS c USING (page_id, psid)
        GROUP BY k.page_id, k.psid, left(n.key, 3), c.last_message_at;
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

-- Built after the fill (a sorted build, compact), while the triggers keep the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS conversation_name_index_recent_idx
    ON conversation_name_index (page_id, key3, sort_at DESC, psid DESC) INCLUDE (names);

-- The visibility map set, so a short prefix's rows are read from the index alone.
VACUUM (ANALYZE) conversation_name_index;

DROP INDEX CONCURRENTLY IF EXISTS contacts_name_prefix_idx;
DROP INDEX CONCURRENTLY IF EXISTS contacts_last_name_prefix_idx;
DROP INDEX CONCURRENTLY IF EXISTS contacts_username_prefix_idx;
