-- convsync: no-transaction
-- `import` joins the sources of an event (`convsync import`: history loaded from another
-- inbox, docs/migration.md). The CHECK of 0001 (`events_source_check`) allowed webhook
-- and crawler only; it is replaced by `events_source_known`.
-- Statement by statement, so that the ACCESS EXCLUSIVE lock of each ALTER lasts an
-- instant: the new constraint is added NOT VALID (no scan under that lock), validated by
-- a scan that holds only SHARE UPDATE EXCLUSIVE (the materializer keeps writing), and
-- only then is the old one dropped. Every statement may run again after a crash midway.
-- Applied with search_path set to the target schema.

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'events'::regclass AND conname = 'events_source_known'
    ) THEN
        ALTER TABLE events ADD CONSTRAINT events_source_known
            CHECK (source IN ('webhook', 'crawler', 'import')) NOT VALID;
    END IF;
END
$$;

ALTER TABLE events VALIDATE CONSTRAINT events_source_known;

ALTER TABLE events DROP CONSTRAINT IF EXISTS events_source_check;
