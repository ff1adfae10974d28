-- The sync digest's work leaves the sequencer's transaction (issue 13: the feed's lag). A
-- digest step used to run inside the numbering round, holding the feed head's lock: under
-- a bulk load its statements took up to 190 ms, and every event committed meanwhile waited
-- that long for its feed position. Now a step is a transaction of its own, on a row of its
-- own, and numbering never waits for it (see src/store/feed.rs, `digest_step`).
--
-- Its snapshot is no longer one in which every committed event is numbered, so a step
-- refreshes only citizens with no event waiting for a number in its snapshot (their state
-- there is their state at the snapshot's head). A citizen taken in while it has one is
-- deferred: it is kept in `digest_deferred` and refreshed by a later step, and nothing is
-- published while any is deferred.
CREATE TABLE digest_head (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    -- The feed position the published digest describes; NULL before the first build.
    digest_through      BIGINT,
    -- Numbered changes up to it are in the work; NULL before the first build begins.
    digest_work_through BIGINT,
    -- During the first build: the last citizen id scanned; NULL when no scan runs.
    digest_build_cursor TEXT
);
INSERT INTO digest_head (id, digest_through, digest_work_through, digest_build_cursor)
    SELECT 1, digest_through, digest_work_through, digest_build_cursor FROM feed_head
    WHERE id = 1;
ALTER TABLE feed_head DROP COLUMN digest_through;
ALTER TABLE feed_head DROP COLUMN digest_work_through;
ALTER TABLE feed_head DROP COLUMN digest_build_cursor;

CREATE TABLE digest_deferred (
    citizen_id TEXT PRIMARY KEY
);
