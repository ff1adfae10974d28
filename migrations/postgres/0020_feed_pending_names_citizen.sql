-- The sequencer's queue names each event's citizen (issue 13: the feed's lag during bulk
-- loads). A sequencing round tells every instance which citizens it numbered events of
-- (the wake-up, and the sync digest's work). It read them by joining the numbered feed
-- rows back to `events`, whose rows are ~600 bytes each: with `log_min_duration_statement
-- = 0` over a 50 k-record SyncAccounts stream on the 1 M population, that join took
-- 11.2 ms a round, the largest of the round's statements, while the round holds the feed
-- head's lock that every other round waits for. Now the trigger copies the citizen from
-- the inserted rows (the transition table it already reads) into the queue, and the
-- round's DELETE of its queue rows returns them.
ALTER TABLE feed_pending ADD COLUMN citizen_id TEXT COLLATE "C";
UPDATE feed_pending p SET citizen_id = e.citizen_id FROM events e WHERE e.position = p.position;
ALTER TABLE feed_pending ALTER COLUMN citizen_id SET NOT NULL;
CREATE OR REPLACE FUNCTION events_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_pending (position, citizen_id) SELECT position, citizen_id FROM new_events;
    RETURN NULL;
END;
$$;
