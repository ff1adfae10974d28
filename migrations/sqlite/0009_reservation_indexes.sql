-- Reservations cost a payroll's batch less; see migrations/postgres/0009 for the reasons.
-- SQLite cannot change a primary key or drop a foreign key in place: both tables are
-- rebuilt with their rows (their DROP does not fire the tables' triggers).
CREATE TABLE duplicate_entitlements_new (
    entitlement_id  BLOB PRIMARY KEY,
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    period          TEXT NOT NULL,
    holder          TEXT NOT NULL,
    claimant        TEXT NOT NULL,
    reservation_id  BLOB NOT NULL,
    detected_at     INTEGER NOT NULL,
    UNIQUE (reservation_id, claimant)
);
INSERT INTO duplicate_entitlements_new SELECT * FROM duplicate_entitlements;
DROP TABLE duplicate_entitlements;
ALTER TABLE duplicate_entitlements_new RENAME TO duplicate_entitlements;
CREATE INDEX duplicate_entitlements_newest
    ON duplicate_entitlements (detected_at DESC, entitlement_id DESC);

CREATE TABLE reservations_new (
    reservation_id  BLOB NOT NULL,
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    period          TEXT NOT NULL,
    holder_key      TEXT NOT NULL,
    holder          TEXT NOT NULL,
    reserved_at     INTEGER NOT NULL,
    released_at     INTEGER,
    release_reason  TEXT,
    CHECK ((released_at IS NULL) = (release_reason IS NULL)),
    PRIMARY KEY (holder, program_code, period, reservation_id)
);
INSERT INTO reservations_new SELECT * FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_new RENAME TO reservations;
CREATE UNIQUE INDEX reservations_live
    ON reservations (program_code, period, holder_key, citizen_id)
    WHERE released_at IS NULL;
CREATE TRIGGER reservations_no_delete BEFORE DELETE ON reservations
BEGIN
    SELECT RAISE(ABORT, 'reservations are released, never deleted');
END;
CREATE TRIGGER reservations_released_once BEFORE UPDATE ON reservations
    WHEN OLD.released_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a released reservation does not change');
END;
