-- A read of many citizens in one call (a BatchResolve batch, a bulk lookup) is logged as
-- one row naming them all (issue 13): `citizen_ids` instead of `citizen_id`, indexed by
-- GIN, whose pending list takes a batch's thousand keys as one sequential append and
-- merges them into the index in sorted runs, instead of a thousand heap rows and a
-- thousand b-tree insertions at random leaves (each a full-page image after a
-- checkpoint). A read of one citizen keeps its row of its own. ListAccessLog reads both
-- (store/access_log.rs).
--
-- Metadata-only changes on a populated table: the column is nullable without a default,
-- and the CHECK is NOT VALID (every existing row has its citizen_id; new rows are
-- checked).
ALTER TABLE access_log ALTER COLUMN citizen_id DROP NOT NULL;
ALTER TABLE access_log ADD COLUMN citizen_ids TEXT[];
ALTER TABLE access_log ADD CONSTRAINT access_log_names_its_citizens
    CHECK ((citizen_id IS NULL) <> (citizen_ids IS NULL)) NOT VALID;
CREATE INDEX access_log_by_citizen_in_batch ON access_log USING GIN (citizen_ids)
    WHERE citizen_ids IS NOT NULL;
