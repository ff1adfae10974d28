-- Payment reservations (trùng lĩnh); see migrations/postgres/0008_reservations.sql for
-- the design. A reservation is never deleted: releasing it sets `released_at` once.
CREATE TABLE reservations (
    reservation_id  BLOB PRIMARY KEY,
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    period          TEXT NOT NULL,
    holder_key      TEXT NOT NULL,
    holder          TEXT NOT NULL,
    reserved_at     INTEGER NOT NULL,
    released_at     INTEGER,
    release_reason  TEXT,
    CHECK ((released_at IS NULL) = (release_reason IS NULL))
);
CREATE UNIQUE INDEX reservations_live
    ON reservations (citizen_id, program_code, period, holder_key)
    WHERE released_at IS NULL;
CREATE INDEX reservations_by_holder
    ON reservations (holder, program_code, period)
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

CREATE TABLE duplicate_entitlements (
    entitlement_id  BLOB PRIMARY KEY,
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    period          TEXT NOT NULL,
    holder          TEXT NOT NULL,
    claimant        TEXT NOT NULL,
    reservation_id  BLOB NOT NULL REFERENCES reservations (reservation_id),
    detected_at     INTEGER NOT NULL,
    UNIQUE (reservation_id, claimant)
);
CREATE INDEX duplicate_entitlements_newest
    ON duplicate_entitlements (detected_at DESC, entitlement_id DESC);
