-- A read of many citizens (0013) names them as numbers: `citizen_keys BIGINT[]`, each
-- 12-digit citizen id as the integer it spells (ids are exactly 12 ASCII digits, so the
-- number names one id: zero-padded back to 12). New rows fill `citizen_keys`; rows
-- written before this migration keep their `citizen_ids TEXT[]`, and ListAccessLog
-- searches both (store/postgres.rs, `LOG_NAMES_CITIZEN`).
--
-- Why: merging the GIN pending list of the text ids was the largest single cost of a
-- BatchResolve on PostgreSQL (1 M ids on the 1 M population, two cores: 15% of the
-- machine's CPU in `ginInsertCleanup`, of which 6.4 points comparing text keys,
-- `bttextcmp` under the database's collation), and the 13-byte keys made each row's
-- array ~14 kB, compressed by pglz on every insert (2.3%). An int8 key compares as one
-- machine word, and 1,000 of them (8 kB) are stored out of line uncompressed (EXTERNAL:
-- random digits do not compress; trying cost CPU for nothing).
--
-- On a populated table: the column is nullable without a default and the new CHECK is
-- NOT VALID (every existing row names its citizens in exactly one of the two older
-- columns; new rows are checked), so both are metadata only; the index is partial on a
-- column every existing row leaves NULL, so building it reads the table once and writes
-- nothing (appends wait for that read).
ALTER TABLE access_log ADD COLUMN citizen_keys BIGINT[];
ALTER TABLE access_log ALTER COLUMN citizen_keys SET STORAGE EXTERNAL;
ALTER TABLE access_log DROP CONSTRAINT access_log_names_its_citizens;
ALTER TABLE access_log ADD CONSTRAINT access_log_names_its_citizens
    CHECK (num_nonnulls(citizen_id, citizen_ids, citizen_keys) = 1) NOT VALID;
-- As 0015: new entries go to the pending list, merged in bulk by the registry's
-- access-log cleaner, off the read path.
CREATE INDEX access_log_by_citizen_key ON access_log USING GIN (citizen_keys)
    WITH (fastupdate = on) WHERE citizen_keys IS NOT NULL;
