-- Append-only tables stop paying for what protects nothing (issue 13: "drop what costs
-- without protecting anything"). Each index below was written on every row and read by
-- no query: the 1 M-population database after a load and BatchResolve runs showed 0 scans
-- on each (pg_stat_user_indexes), and the code has no lookup by these keys.
--
-- * events.event_id: unique by construction (a UUIDv7 made by the write path); nothing
--   looks an event up by it (consumers use it to drop repeats). 212 MB at 1 M citizens,
--   and updated once more per event by the sequencer.
-- * access_log, citizen_history, preference_history: their BIGSERIAL ids come from a
--   sequence (unique by construction) and are read only through the per-citizen indexes
--   (access_log_by_citizen, *_as_of), which end with the id. Together 171 MB at 1 M.
-- * citizen_history -> citizens and account_history -> accounts: the write path writes a
--   history row in the same transaction as the row it describes; rows of either are never
--   deleted. The check cost one index probe per history row.
--
-- Kept: events' primary key (the sequencer's updates and retention's deletes find rows
-- by it), account_history's (account_id, version) (AccountHistory reads by it), every
-- foreign key on a table that rows are updated in. SQLite is unchanged: its BIGSERIAL
-- columns are the rowid (no index of their own), and its foreign keys and inline UNIQUE
-- would need each table rebuilt.
ALTER TABLE events DROP CONSTRAINT events_event_id_key;
ALTER TABLE access_log DROP CONSTRAINT access_log_pkey;
ALTER TABLE citizen_history DROP CONSTRAINT citizen_history_pkey;
ALTER TABLE preference_history DROP CONSTRAINT preference_history_pkey;
ALTER TABLE citizen_history DROP CONSTRAINT citizen_history_citizen_id_fkey;
ALTER TABLE account_history DROP CONSTRAINT account_history_account_id_fkey;
