-- A read of many citizens in one call (a BatchResolve batch, a bulk lookup) is logged as
-- one row naming them all (issue 13): `citizen_ids` instead of `citizen_id`, indexed by
-- GIN (one index tuple per citizen, a posting list per key), instead of a thousand heap
-- rows of ~100 bytes and a thousand b-tree entries. A read of one citizen keeps its row
-- of its own. ListAccessLog reads both
-- (store/access_log.rs).
--
-- Metadata-only changes on a populated table: the column is nullable without a default,
-- and the CHECK is NOT VALID (every existing row has its citizen_id; new rows are
-- checked).
ALTER TABLE access_log ALTER COLUMN citizen_id DROP NOT NULL;
ALTER TABLE access_log ADD COLUMN citizen_ids TEXT[];
ALTER TABLE access_log ADD CONSTRAINT access_log_names_its_citizens
    CHECK ((citizen_id IS NULL) <> (citizen_ids IS NULL)) NOT VALID;
-- fastupdate off: with the pending list on, the writer whose batch overflowed it merged
-- the whole list (~0.5 s at 1 M citizens) while the BatchResolve streams waiting for the
-- log stalled (p95 953 ms, p50 433); off, each row's keys go into the index as it is
-- written, at about the same rate with a steady latency (p95 630, p50 588).
CREATE INDEX access_log_by_citizen_in_batch ON access_log USING GIN (citizen_ids)
    WITH (fastupdate = off) WHERE citizen_ids IS NOT NULL;
