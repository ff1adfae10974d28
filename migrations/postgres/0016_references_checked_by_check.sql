-- The foreign keys of accounts, preferences and citizen_aliases stop being checked row by
-- row (issue 13: "drop what costs without protecting anything (foreign keys the write
-- path already guarantees ...)"). Migration 0010 kept them because rows of these tables
-- are updated; what the keys protect is the same for updated rows, though:
--
-- * Nothing the keys point at is ever deleted or renamed: citizens end as DECEASED or
--   ID_REVOKED, accounts as CLOSED, providers as inactive; no statement of the registry
--   deletes from citizens, accounts or providers, or updates their keys. So the keys could
--   only refuse an insert, or an update that sets a preference's account.
-- * Those writes are all the one write path's (store/batch.rs, domain/planner.rs): it
--   writes an account only for a citizen it has read and locked in the same transaction,
--   with a provider it has read (an unknown one is rejected as PROVIDER_UNKNOWN first), a
--   preference only for one of that citizen's own accounts, which it has read and locked,
--   and a legacy id only for the citizen of the record.
--
-- Each key was one index probe, run through a trigger and SPI, per row written. Inserting
-- 100 k rows into a copy of accounts (its indexes, 300 k citizens loaded) took 1.32 s
-- without its two keys and 2.85 s with them. Loading 1 M demo citizens (2 cores, runs
-- alternated) took 249.4 and 240.9 s with these six keys against 171.2 and 199.9 s
-- without them, and the machine's busy CPU time fell from 433/417 to 279/329 s. What they
-- protected is now checked as a whole by `payout-registry check` (store/references.rs),
-- which also finds what no foreign key could: a preference pointing at another citizen's
-- account.
--
-- Kept: payout_failures -> accounts and duplicate_entitlements -> reservations (rare
-- writes). SQLite keeps its foreign keys (dropping them would rebuild each table; there a check is
-- an in-process index probe).
ALTER TABLE accounts DROP CONSTRAINT accounts_citizen_id_fkey;
ALTER TABLE accounts DROP CONSTRAINT accounts_provider_code_fkey;
ALTER TABLE preferences DROP CONSTRAINT preferences_citizen_id_fkey;
ALTER TABLE preferences DROP CONSTRAINT preferences_account_id_fkey;
ALTER TABLE preferences DROP CONSTRAINT preferences_previous_account_id_fkey;
ALTER TABLE citizen_aliases DROP CONSTRAINT citizen_aliases_citizen_id_fkey;
