-- convsync: no-transaction
-- A page's conversations by the name of their user (admin/lists.py, the `name` filter of
-- GET /pages/{page_id}/conversations): a case-insensitive prefix of the contact's full
-- name, last name or Instagram username. Each is a range of one of these indexes (the
-- pattern operators compare bytes, whatever the database's collation, which is what a
-- LIKE 'prefix%' range needs); the three ranges are OR-ed as bitmaps and the matches,
-- a few per prefix on a page, joined to their conversations and sorted. Measured in
-- docs/performance.md ("The read path"). Built CONCURRENTLY: the crawler keeps writing
-- contacts meanwhile (schemas/migrate.py).
CREATE INDEX CONCURRENTLY IF NOT EXISTS contacts_name_prefix_idx
    ON contacts (page_id, lower(name) text_pattern_ops);
CREATE INDEX CONCURRENTLY IF NOT EXISTS contacts_last_name_prefix_idx
    ON contacts (page_id, lower(last_name) text_pattern_ops);
CREATE INDEX CONCURRENTLY IF NOT EXISTS contacts_username_prefix_idx
    ON contacts (page_id, lower(username) text_pattern_ops);
