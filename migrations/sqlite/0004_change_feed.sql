-- The change feed: gapless positions in commit order, and durable consumers.
-- Same design as migrations/postgres/0004_change_feed.sql, in SQLite's dialect.
ALTER TABLE events ADD COLUMN feed_position INTEGER;
CREATE UNIQUE INDEX events_by_feed_position ON events (feed_position);
CREATE INDEX events_unsequenced ON events (position) WHERE feed_position IS NULL;

CREATE TABLE feed_head (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_position INTEGER NOT NULL,
    -- Events up to here were pruned (retention); the feed starts after it.
    pruned_through INTEGER NOT NULL DEFAULT 0
);
INSERT INTO feed_head (id, last_position) VALUES (1, 0);

UPDATE events SET feed_position = position;
UPDATE feed_head SET last_position = (SELECT COALESCE(MAX(position), 0) FROM events);

DROP TRIGGER events_no_update;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
WHEN OLD.feed_position IS NOT NULL OR NEW.feed_position IS NULL
    OR NEW.position IS NOT OLD.position OR NEW.event_id IS NOT OLD.event_id
    OR NEW.occurred_at IS NOT OLD.occurred_at OR NEW.event_type IS NOT OLD.event_type
    OR NEW.citizen_id IS NOT OLD.citizen_id OR NEW.account_id IS NOT OLD.account_id
    OR NEW.actor IS NOT OLD.actor OR NEW.reason IS NOT OLD.reason
    OR NEW.payload IS NOT OLD.payload
BEGIN
    SELECT RAISE(ABORT, 'events is append-only (only an unsequenced event may be given its feed position)');
END;

CREATE TABLE feed_consumers (
    client_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, name)
) WITHOUT ROWID;

CREATE TABLE watch_lists (
    client_id   TEXT NOT NULL,
    consumer    TEXT NOT NULL,
    citizen_id  TEXT NOT NULL,
    PRIMARY KEY (client_id, consumer, citizen_id)
) WITHOUT ROWID;
