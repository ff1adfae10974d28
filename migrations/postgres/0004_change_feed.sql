-- The change feed: gapless positions in commit order, and durable consumers.
--
-- `events.position` is taken from a sequence when the event is written, so concurrent
-- transactions can commit them out of order: a reader that has seen position 12 cannot
-- know whether a slow transaction will still commit position 11. The feed therefore
-- orders events by `feed_position`, assigned after commit by the sequencer (any server
-- instance; they take turns on the `feed_head` row lock): it numbers the committed events
-- that have none yet, consecutively after the head, in one transaction. A feed position,
-- once visible, has every lower one visible too, so resuming after the last one seen
-- misses nothing and repeats nothing.
ALTER TABLE events ADD COLUMN feed_position BIGINT;
CREATE UNIQUE INDEX events_by_feed_position ON events (feed_position);
CREATE INDEX events_unsequenced ON events (position) WHERE feed_position IS NULL;

CREATE TABLE feed_head (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_position BIGINT NOT NULL,
    -- Events up to here were pruned (retention); the feed starts after it.
    pruned_through BIGINT NOT NULL DEFAULT 0
);
INSERT INTO feed_head (id, last_position) VALUES (1, 0);

-- Events already written get their feed positions in write order.
UPDATE events SET feed_position = position;
UPDATE feed_head SET last_position = (SELECT COALESCE(MAX(position), 0) FROM events);

-- Events stay append-only; the only update allowed is the sequencer's, once.
DROP TRIGGER events_append_only ON events;
CREATE FUNCTION events_sequence_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.feed_position IS NULL AND NEW.feed_position IS NOT NULL
       AND (NEW.position, NEW.event_id, NEW.occurred_at, NEW.event_type, NEW.citizen_id,
            NEW.account_id, NEW.actor, NEW.reason, NEW.payload)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.event_id, OLD.occurred_at, OLD.event_type, OLD.citizen_id,
            OLD.account_id, OLD.actor, OLD.reason, OLD.payload) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events is append-only (only an unsequenced event may be given its feed position)';
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_sequence_only();

-- Named consumers' positions, per client.
CREATE TABLE feed_consumers (
    client_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    position    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (client_id, name)
);

-- Wake the sequencers of every instance when events are committed (delivered at commit;
-- several in one transaction are folded into one).
CREATE FUNCTION events_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('payout_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_written AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_written();

-- Consumers' watch lists: the citizens whose events a subscription carries.
CREATE TABLE watch_lists (
    client_id   TEXT NOT NULL,
    consumer    TEXT NOT NULL,
    citizen_id  TEXT NOT NULL,
    PRIMARY KEY (client_id, consumer, citizen_id)
);

-- The sequencer updates each event once, leaving a dead row version whose index entries
-- (feed_position IS NULL) it would otherwise step over on every round: have autovacuum
-- clean `events` after every 10,000 dead versions rather than after 20% of the table.
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000);
