-- The sequencer's queue names each event's citizen; see migrations/postgres/0020.
ALTER TABLE feed_pending ADD COLUMN citizen_id TEXT;
UPDATE feed_pending
    SET citizen_id = (SELECT e.citizen_id FROM events e WHERE e.position = feed_pending.position);
DROP TRIGGER events_pending;
CREATE TRIGGER events_pending AFTER INSERT ON events
BEGIN
    INSERT INTO feed_pending (position, citizen_id) VALUES (NEW.position, NEW.citizen_id);
END;
