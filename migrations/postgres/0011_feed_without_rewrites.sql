-- The change feed stops rewriting events (issue 13: each record's cost). The sequencer used
-- to UPDATE every event to set its feed position. Because feed_position was indexed, that
-- update could never be HOT: it wrote a second ~600-byte version of every event, one
-- entry in each of the table's indexes, and ran a row trigger comparing nine columns. A
-- 1 M-citizen load left 3.5 M events, and the first server start doubled their heap.
--
-- Now events are append-only without exception (pruning aside). A feed position is a
-- row of `feed` (feed_position -> events.position), appended by the sequencer. The events
-- it has yet to number are rows of `feed_pending`, which a statement trigger on events
-- fills in the writer's own transaction, so a pending row is visible exactly when its
-- event is committed. The sequencer's numbering rules are unchanged (0004): it takes the
-- head row's lock and numbers the committed pending events in position order, after the
-- head.
CREATE TABLE feed (
    feed_position BIGINT PRIMARY KEY,
    position      BIGINT NOT NULL UNIQUE
);
CREATE TABLE feed_pending (
    position BIGINT PRIMARY KEY
);
-- Rows come and go once each: have autovacuum clean up after every 10,000.
ALTER TABLE feed_pending SET (autovacuum_vacuum_scale_factor = 0.0,
                              autovacuum_vacuum_threshold = 10000);
ALTER TABLE events RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);

INSERT INTO feed (feed_position, position)
    SELECT feed_position, position FROM events WHERE feed_position IS NOT NULL;
INSERT INTO feed_pending (position) SELECT position FROM events WHERE feed_position IS NULL;

DROP TRIGGER events_append_only ON events;
DROP FUNCTION events_sequence_only();
ALTER TABLE events DROP COLUMN feed_position;   -- and its two indexes
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_rewrite();

CREATE FUNCTION events_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_pending (position) SELECT position FROM new_events;
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_pending AFTER INSERT ON events REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_pending();

-- A feed position, once given, does not change (pruning deletes it with its event).
CREATE TRIGGER feed_append_only BEFORE UPDATE ON feed
    FOR EACH ROW EXECUTE FUNCTION refuse_history_rewrite();
