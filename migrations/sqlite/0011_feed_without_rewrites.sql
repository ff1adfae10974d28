-- The change feed stops rewriting events; see migrations/postgres/0011 for the design.
CREATE TABLE feed (
    feed_position INTEGER PRIMARY KEY,
    position      INTEGER NOT NULL UNIQUE
);
CREATE TABLE feed_pending (
    position INTEGER PRIMARY KEY
);
INSERT INTO feed (feed_position, position)
    SELECT feed_position, position FROM events WHERE feed_position IS NOT NULL;
INSERT INTO feed_pending (position) SELECT position FROM events WHERE feed_position IS NULL;

DROP TRIGGER events_no_update;
DROP INDEX events_by_feed_position;
DROP INDEX events_unsequenced;
ALTER TABLE events DROP COLUMN feed_position;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only');
END;
CREATE TRIGGER events_pending AFTER INSERT ON events
BEGIN
    INSERT INTO feed_pending (position) VALUES (NEW.position);
END;
CREATE TRIGGER feed_no_update BEFORE UPDATE ON feed
BEGIN
    SELECT RAISE(ABORT, 'feed is append-only');
END;
