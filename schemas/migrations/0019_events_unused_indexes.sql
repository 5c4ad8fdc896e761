-- convsync: no-transaction
-- Two indexes of `events` that no statement reads any longer, dropped: every stored event
-- wrote an entry into each (96 bytes per event on the 50,000,000-event data set, 4.6 GB),
-- at a random leaf page of an index far larger than memory, which is what ingest waits
-- for at that size (docs/performance.md, "The read path", "Under load").
--
-- events_mid_idx (mid), from 0001: every lookup of a message by its mid names its page
-- (the messages view's edits, reactions and unsends; the materializer's fold of the last
-- message's text), which events_target_idx (page_id, mid, kind) serves.
--
-- events_message_changes_idx (page_id, psid, mid, kind) for edits and reactions, from
-- 0008: since 0017 those lookups compare psid in "C" and go through events_target_idx
-- (the planner misjudged this index's selectivity and read whole conversations instead).
--
-- Dropped CONCURRENTLY, so a live materializer keeps writing; IF EXISTS, so the
-- migration can run again after a crash midway.
DROP INDEX CONCURRENTLY IF EXISTS events_mid_idx;
DROP INDEX CONCURRENTLY IF EXISTS events_message_changes_idx;
