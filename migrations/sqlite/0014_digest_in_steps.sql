-- The sync digest is brought up to date in bounded steps (see src/store/feed.rs,
-- `digest_step`). A round refreshes the citizens of at most one round's worth of numbered
-- events, and during the first build scans at most that many citizens with a
-- preference; the published digest (`digest_through`, `digest_provinces.digest`/`routes`)
-- moves only when the work has reached the head with no committed event left
-- unnumbered. Until then GetSyncDigest keeps answering the last published digest, exact
-- at its position. Before this, the first build over a loaded population (819 k citizens)
-- and the catch-up after a long busy spell were each one transaction: on SQLite that held
-- the only write connection for seconds, and writes waiting for it failed UNAVAILABLE.

-- The feed position through which numbered changes have been taken into the work; NULL
-- before the first build begins.
ALTER TABLE feed_head ADD COLUMN digest_work_through BIGINT;
-- During the first build: the last citizen id scanned (citizens up to it are in the
-- work); NULL when no scan is in progress.
ALTER TABLE feed_head ADD COLUMN digest_build_cursor TEXT;
UPDATE feed_head SET digest_work_through = digest_through;

-- Each province's digest as the work has it; copied to `digest`/`routes` when published.
ALTER TABLE digest_provinces ADD COLUMN work_digest TEXT;
ALTER TABLE digest_provinces ADD COLUMN work_routes BIGINT;
UPDATE digest_provinces SET work_digest = digest, work_routes = routes;
