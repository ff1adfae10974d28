-- Identifiers compare byte by byte (COLLATE "C"), whatever the database's locale (issue 13:
-- each record's cost).
--
-- A text column without a collation of its own sorts under the database's default, and
-- every B-tree probe or insert on it compares keys through that locale. A ministry's
-- database is as likely as not created under Vietnamese: on a database with the ICU
-- locale vi-VN, a 1,000-key `= ANY` lookup of 1 M citizen ids ran 3.6-5x slower than on
-- the same ids in byte order, and random inserts 1.5x slower (PostgreSQL 15, 2 cores).
-- Even under this machine's C.UTF-8 the locale path (strcoll) cost 13% of that lookup.
--
-- These columns hold citizen ids, codes, references and names of things, never prose: the
-- only order that means anything for them is the byte order, the one SQLite (BINARY) and
-- the client libraries use. For ASCII digits the two orders agree, so no stored order, page
-- token or digest changes meaning. Free text (names, reasons, payloads) keeps the
-- database's collation. The read model's key was declared so from the start (0012).
--
-- Cost: no table is rewritten (same type, another collation), but every index on these
-- columns is rebuilt under the new collation, holding the table's lock meanwhile: about a
-- minute at 1 M citizens here. Take it before a national load, not after. The text array
-- of calls logged before 0017 (access_log.citizen_ids) is left as it is: it only shrinks
-- with retention, and its GIN index finds elements by equality.
ALTER TABLE citizens
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN province_code TYPE TEXT COLLATE "C";
ALTER TABLE accounts
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_code TYPE TEXT COLLATE "C",
    ALTER COLUMN account_ref TYPE TEXT COLLATE "C";
ALTER TABLE account_history
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_code TYPE TEXT COLLATE "C",
    ALTER COLUMN account_ref TYPE TEXT COLLATE "C";
ALTER TABLE citizen_history
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C";
ALTER TABLE citizen_aliases
    ALTER COLUMN legacy_id TYPE TEXT COLLATE "C",
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C";
ALTER TABLE preferences
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN program_code TYPE TEXT COLLATE "C";
ALTER TABLE preference_history
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN program_code TYPE TEXT COLLATE "C";
ALTER TABLE events
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C";
ALTER TABLE access_log
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN client_id TYPE TEXT COLLATE "C";
ALTER TABLE duplicate_claims
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_code TYPE TEXT COLLATE "C",
    ALTER COLUMN account_ref TYPE TEXT COLLATE "C",
    ALTER COLUMN claimant_citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN holder_citizen_id TYPE TEXT COLLATE "C";
ALTER TABLE duplicate_entitlements
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN claimant TYPE TEXT COLLATE "C",
    ALTER COLUMN holder TYPE TEXT COLLATE "C",
    ALTER COLUMN period TYPE TEXT COLLATE "C",
    ALTER COLUMN program_code TYPE TEXT COLLATE "C";
ALTER TABLE payout_failures
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN program_code TYPE TEXT COLLATE "C";
ALTER TABLE sync_records
    ALTER COLUMN stream TYPE TEXT COLLATE "C",
    ALTER COLUMN record_id TYPE TEXT COLLATE "C",
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C";
ALTER TABLE digest_citizens
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C";
ALTER TABLE digest_provinces
    ALTER COLUMN province TYPE TEXT COLLATE "C";
ALTER TABLE reservations
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN holder TYPE TEXT COLLATE "C",
    ALTER COLUMN holder_key TYPE TEXT COLLATE "C",
    ALTER COLUMN period TYPE TEXT COLLATE "C",
    ALTER COLUMN program_code TYPE TEXT COLLATE "C";
ALTER TABLE watch_lists
    ALTER COLUMN citizen_id TYPE TEXT COLLATE "C",
    ALTER COLUMN client_id TYPE TEXT COLLATE "C",
    ALTER COLUMN consumer TYPE TEXT COLLATE "C";
ALTER TABLE feed_consumers
    ALTER COLUMN client_id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C";
ALTER TABLE idempotency_keys
    ALTER COLUMN client_id TYPE TEXT COLLATE "C";
ALTER TABLE programs
    ALTER COLUMN code TYPE TEXT COLLATE "C";
ALTER TABLE providers
    ALTER COLUMN code TYPE TEXT COLLATE "C";
ALTER TABLE read_models
    ALTER COLUMN name TYPE TEXT COLLATE "C";
