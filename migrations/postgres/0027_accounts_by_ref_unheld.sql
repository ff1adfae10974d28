-- An account is found by its key (kind, provider_code, account_ref) through one index,
-- not two: `accounts_one_holder` (0001) already holds every VERIFIED or SUSPENDED
-- account's key, so `accounts_by_ref` now holds only the others' (PENDING_VERIFICATION,
-- CLOSED, REJECTED, and any status added later), and a read of every claim on a key
-- (`Store::account_claims`) reads both indexes (one arm of a UNION ALL each, with the
-- same condition as the index it uses).
--
-- Why: a sync stream's new accounts belong to citizens in no particular order, so each
-- one changed a random leaf of every index of `accounts`; after each checkpoint the
-- first change to a leaf writes the whole page to the WAL. A 20 k-record SyncAccounts
-- stream just after a checkpoint on the 1 M population (2 cores; pg_waldump, full pages
-- by relation) wrote 55.3 k full pages, of which `accounts_by_ref` 8,961 (16%), the most
-- of any relation, for 102 MB of index whose entries for held accounts repeated
-- `accounts_one_holder`'s.
--
-- On a populated table the CREATE INDEX reads `accounts` once and blocks its writes
-- meanwhile (seconds at 1.5 M accounts; minutes at national scale), as 0009's rebuilds.
CREATE INDEX accounts_by_ref_unheld ON accounts (kind, provider_code, account_ref)
    WHERE status NOT IN ('VERIFIED', 'SUSPENDED');
DROP INDEX accounts_by_ref;
