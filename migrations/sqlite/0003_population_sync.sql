-- Population sync: the replay ledger and legacy CMND aliases.
-- Same tables as migrations/postgres/0003_population_sync.sql, in SQLite's dialect.

CREATE TABLE sync_records (
    stream      TEXT NOT NULL CHECK (stream IN ('CITIZENS', 'ACCOUNTS')),
    record_id   TEXT NOT NULL,
    version     INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    citizen_id  TEXT NOT NULL,
    account_id  BLOB,
    synced_at   INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    PRIMARY KEY (stream, record_id)
) WITHOUT ROWID;

CREATE TABLE citizen_aliases (
    legacy_id   TEXT PRIMARY KEY CHECK (length(legacy_id) = 9 AND legacy_id NOT GLOB '*[^0-9]*'),
    citizen_id  TEXT NOT NULL REFERENCES citizens (citizen_id),
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX citizen_aliases_by_citizen ON citizen_aliases (citizen_id);

ALTER TABLE citizen_history ADD COLUMN date_of_birth TEXT;
