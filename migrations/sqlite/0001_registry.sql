-- The registry's schema on SQLite (the embedded default). Same tables, columns and
-- constraints as migrations/postgres/0001_registry.sql, in SQLite's dialect.
--
-- Instants are INTEGER microseconds since the Unix epoch (UTC), as on SQLite, so that both
-- backends order and compare history identically. Enumerations are TEXT with CHECK
-- constraints: their names are the same strings the API and events use.
--
-- Current state lives in citizens, accounts and preferences; every change to them is
-- also appended to a *_history table in the same transaction. History tables are
-- append-only: triggers refuse UPDATE and DELETE, so "what was true on 2026-05-01" can
-- always be answered.

-- Reference data, seeded from reference/*.csv by `migrate`.
CREATE TABLE providers (
    code        TEXT PRIMARY KEY,           -- 6-digit NAPAS BIN for banks, a code for wallets
    kind        TEXT NOT NULL CHECK (kind IN ('BANK_ACCOUNT', 'EWALLET', 'MOBILE_MONEY')),
    name        TEXT NOT NULL,
    short_name  TEXT NOT NULL,
    active      BOOLEAN NOT NULL
);

CREATE TABLE programs (
    code        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL
);

-- A citizen the registry knows: from the population platform, or first seen when an
-- account was linked (then ACTIVE with no registered name).
CREATE TABLE citizens (
    citizen_id      TEXT PRIMARY KEY CHECK (length(citizen_id) = 12 AND citizen_id NOT GLOB '*[^0-9]*'),
    province_code   TEXT NOT NULL,
    full_name       TEXT,                   -- registered name, normalised
    date_of_birth   TEXT,                   -- ISO date
    status          TEXT NOT NULL CHECK (status IN ('ACTIVE', 'DECEASED', 'ID_REVOKED')),
    died_on         TEXT,
    source_version  INTEGER,                 -- population platform's version; NULL if never synced
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE citizen_history (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    citizen_id      TEXT NOT NULL REFERENCES citizens (citizen_id),
    full_name       TEXT,
    status          TEXT NOT NULL,
    died_on         TEXT,
    source_version  INTEGER,
    valid_from      INTEGER NOT NULL,
    actor           TEXT NOT NULL,
    reason          TEXT NOT NULL
);
CREATE INDEX citizen_history_as_of ON citizen_history (citizen_id, valid_from, id);

CREATE TABLE accounts (
    account_id          BLOB PRIMARY KEY,
    citizen_id          TEXT NOT NULL REFERENCES citizens (citizen_id),
    kind                TEXT NOT NULL CHECK (kind IN ('BANK_ACCOUNT', 'EWALLET', 'MOBILE_MONEY')),
    provider_code       TEXT NOT NULL REFERENCES providers (code),
    account_ref         TEXT NOT NULL,
    holder_name         TEXT,
    status              TEXT NOT NULL CHECK (status IN
                            ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED', 'CLOSED', 'REJECTED')),
    verification_method TEXT,
    verified_by         TEXT,
    verified_at         INTEGER,
    evidence_ref        TEXT,
    version             INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
-- Rule 1, one account one person: an account is held (VERIFIED or SUSPENDED) by at most
-- one citizen. This index is what makes concurrent claims safe: the loser of a race gets
-- a unique violation, which the store records as a duplicate claim.
CREATE UNIQUE INDEX accounts_one_holder ON accounts (kind, provider_code, account_ref)
    WHERE status IN ('VERIFIED', 'SUSPENDED');
-- A citizen cannot link the same account twice while it is open.
CREATE UNIQUE INDEX accounts_one_open_link ON accounts (citizen_id, kind, provider_code, account_ref)
    WHERE status IN ('PENDING_VERIFICATION', 'VERIFIED', 'SUSPENDED');
CREATE INDEX accounts_by_citizen ON accounts (citizen_id);
CREATE INDEX accounts_by_ref ON accounts (kind, provider_code, account_ref);

-- Every version of every account, the current one included.
CREATE TABLE account_history (
    account_id          BLOB NOT NULL REFERENCES accounts (account_id),
    version             INTEGER NOT NULL,
    change              TEXT NOT NULL,
    citizen_id          TEXT NOT NULL,
    kind                TEXT NOT NULL,
    provider_code       TEXT NOT NULL,
    account_ref         TEXT NOT NULL,
    holder_name         TEXT,
    status              TEXT NOT NULL,
    verification_method TEXT,
    verified_by         TEXT,
    verified_at         INTEGER,
    evidence_ref        TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    valid_from          INTEGER NOT NULL,
    actor               TEXT NOT NULL,
    reason              TEXT NOT NULL,
    PRIMARY KEY (account_id, version)
);
CREATE INDEX account_history_as_of ON account_history (account_id, valid_from);

-- A citizen's current choice of account, per program ('' = the default).
CREATE TABLE preferences (
    citizen_id          TEXT NOT NULL REFERENCES citizens (citizen_id),
    program_code        TEXT NOT NULL,
    account_id          BLOB NOT NULL REFERENCES accounts (account_id),
    previous_account_id BLOB REFERENCES accounts (account_id),  -- paid during cooling-off
    since               INTEGER NOT NULL,
    PRIMARY KEY (citizen_id, program_code)
);

CREATE TABLE preference_history (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    citizen_id          TEXT NOT NULL,
    program_code        TEXT NOT NULL,
    account_id          BLOB NOT NULL,
    previous_account_id BLOB,
    valid_from          INTEGER NOT NULL,
    actor               TEXT NOT NULL,
    reason              TEXT NOT NULL
);
CREATE INDEX preference_history_as_of ON preference_history (citizen_id, program_code, valid_from, id);

-- A refused claim on an account held by another citizen, kept for investigators.
CREATE TABLE duplicate_claims (
    claim_id            BLOB PRIMARY KEY,
    kind                TEXT NOT NULL,
    provider_code       TEXT NOT NULL,
    account_ref         TEXT NOT NULL,
    claimant_citizen_id TEXT NOT NULL,
    holder_citizen_id   TEXT NOT NULL,
    holder_account_id   BLOB NOT NULL,
    context             TEXT NOT NULL,      -- LINK or VERIFY
    detected_at         INTEGER NOT NULL,
    actor               TEXT NOT NULL
);
CREATE INDEX duplicate_claims_by_ref ON duplicate_claims (kind, provider_code, account_ref);

-- The outbox: one row per change, written in the change's transaction.
CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    BLOB NOT NULL UNIQUE,
    occurred_at INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    citizen_id  TEXT NOT NULL,
    account_id  BLOB,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    payload     TEXT NOT NULL              -- JSON snapshot of what changed
);
CREATE INDEX events_by_citizen ON events (citizen_id, position);

-- A write's first answer, so that a retry with the same key gets it again.
CREATE TABLE idempotency_keys (
    client_id    TEXT NOT NULL,
    key          BLOB NOT NULL,
    request_hash BLOB NOT NULL,
    response     TEXT NOT NULL,            -- JSON of the stored outcome
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (client_id, key)
);

-- History is never rewritten.
CREATE TRIGGER account_history_no_update BEFORE UPDATE ON account_history
BEGIN
    SELECT RAISE(ABORT, 'account_history is append-only');
END;
CREATE TRIGGER account_history_no_delete BEFORE DELETE ON account_history
BEGIN
    SELECT RAISE(ABORT, 'account_history is append-only');
END;
CREATE TRIGGER citizen_history_no_update BEFORE UPDATE ON citizen_history
BEGIN
    SELECT RAISE(ABORT, 'citizen_history is append-only');
END;
CREATE TRIGGER citizen_history_no_delete BEFORE DELETE ON citizen_history
BEGIN
    SELECT RAISE(ABORT, 'citizen_history is append-only');
END;
CREATE TRIGGER preference_history_no_update BEFORE UPDATE ON preference_history
BEGIN
    SELECT RAISE(ABORT, 'preference_history is append-only');
END;
CREATE TRIGGER preference_history_no_delete BEFORE DELETE ON preference_history
BEGIN
    SELECT RAISE(ABORT, 'preference_history is append-only');
END;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only');
END;
CREATE TRIGGER duplicate_claims_no_update BEFORE UPDATE ON duplicate_claims
BEGIN
    SELECT RAISE(ABORT, 'duplicate_claims is append-only');
END;
CREATE TRIGGER duplicate_claims_no_delete BEFORE DELETE ON duplicate_claims
BEGIN
    SELECT RAISE(ABORT, 'duplicate_claims is append-only');
END;
