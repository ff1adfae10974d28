-- Oversight: who read which citizen's data, and payers' reports of failed credits.
-- Same tables as migrations/postgres/0002_oversight.sql, in SQLite's dialect.

CREATE TABLE access_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    citizen_id  TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    method      TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    accessed_at INTEGER NOT NULL,
    request_id  BLOB NOT NULL
);
CREATE INDEX access_log_by_citizen ON access_log (citizen_id, id);
CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;
CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;

CREATE TABLE payout_failures (
    failure_id      BLOB PRIMARY KEY,
    account_id      BLOB NOT NULL REFERENCES accounts (account_id),
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    failure_code    TEXT NOT NULL,
    payer_reference TEXT NOT NULL,
    failed_at       INTEGER,
    reported_at     INTEGER NOT NULL,
    actor           TEXT NOT NULL,
    reason          TEXT NOT NULL
);
CREATE INDEX payout_failures_by_account ON payout_failures (account_id, reported_at);
CREATE TRIGGER payout_failures_no_update BEFORE UPDATE ON payout_failures
BEGIN
    SELECT RAISE(ABORT, 'payout_failures is append-only');
END;
CREATE TRIGGER payout_failures_no_delete BEFORE DELETE ON payout_failures
BEGIN
    SELECT RAISE(ABORT, 'payout_failures is append-only');
END;
