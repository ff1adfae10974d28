-- A read of many citizens in one call is logged as one row naming them all (issue 13;
-- see migrations/postgres/0013). SQLite has no index over a list, so a batch row's
-- citizens are also narrow rows of `access_log_citizens` (one b-tree entry each, instead
-- of a full row and an index entry). citizen_id becomes nullable: the table is rebuilt,
-- ids kept.
CREATE TABLE access_log_rebuilt (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    citizen_id  TEXT,
    client_id   TEXT NOT NULL,
    method      TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    accessed_at INTEGER NOT NULL,
    request_id  BLOB NOT NULL,
    -- A JSON array of citizen ids, for a row of many.
    citizen_ids TEXT,
    CHECK ((citizen_id IS NULL) <> (citizen_ids IS NULL))
);
INSERT INTO access_log_rebuilt (id, citizen_id, client_id, method, purpose, accessed_at,
                                request_id)
    SELECT id, citizen_id, client_id, method, purpose, accessed_at, request_id
    FROM access_log;
DROP TABLE access_log;
ALTER TABLE access_log_rebuilt RENAME TO access_log;
CREATE INDEX access_log_by_citizen ON access_log (citizen_id, id);
CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;
CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;

CREATE TABLE access_log_citizens (
    citizen_id TEXT NOT NULL,
    log_id     INTEGER NOT NULL,
    PRIMARY KEY (citizen_id, log_id)
) WITHOUT ROWID;
CREATE TRIGGER access_log_citizens_no_update BEFORE UPDATE ON access_log_citizens
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;
CREATE TRIGGER access_log_citizens_no_delete BEFORE DELETE ON access_log_citizens
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;
