-- Population sync: the ledger that makes sync streams safe to replay, and legacy CMND
-- numbers as aliases of citizen ids.

-- Per source record, the last version the registry acted on (applied or rejected) and
-- what it did. A record whose version is not greater is STALE and changes nothing; this
-- is what lets a client resume a cut stream from its last acknowledgement, or replay a
-- whole file, without applying anything twice.
CREATE TABLE sync_records (
    stream      TEXT NOT NULL CHECK (stream IN ('CITIZENS', 'ACCOUNTS')),
    record_id   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    outcome     TEXT NOT NULL,              -- APPLIED, or the rejection reason
    citizen_id  TEXT NOT NULL,
    account_id  UUID,                       -- ACCOUNTS: the account the record declares
    synced_at   BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    PRIMARY KEY (stream, record_id)
);

-- Legacy 9-digit CMND numbers. A number belongs to one citizen for good: a record that
-- would move it to another citizen is refused.
CREATE TABLE citizen_aliases (
    legacy_id   TEXT PRIMARY KEY CHECK (legacy_id ~ '^[0-9]{9}$'),
    citizen_id  TEXT NOT NULL REFERENCES citizens (citizen_id),
    created_at  BIGINT NOT NULL
);
CREATE INDEX citizen_aliases_by_citizen ON citizen_aliases (citizen_id);

ALTER TABLE citizen_history ADD COLUMN date_of_birth TEXT;
