-- Payment reservations (trùng lĩnh): a payroll about to pay a citizen for a program and
-- period reserves that payment, and per (citizen, program, period, holder_key) one payer
-- holds it (src/domain/reservation.rs). `holder_key` is empty when one payer holds it for
-- everyone (the default), the payer's client id for programs where each payer holds its
-- own. A reservation is never deleted: releasing it sets `released_at` once, so each row
-- keeps both of its states; reserving again after a release is a new row. No foreign
-- keys: only a citizen the registry just resolved as payable, for a program of the
-- reference data, is ever reserved (the write path guarantees both), and a check per row
-- cost a payroll's batch more than it protected.
CREATE TABLE reservations (
    reservation_id  UUID PRIMARY KEY,
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    period          TEXT NOT NULL,
    holder_key      TEXT NOT NULL,
    holder          TEXT NOT NULL,              -- the client holding it
    reserved_at     BIGINT NOT NULL,
    released_at     BIGINT,
    release_reason  TEXT,
    CHECK ((released_at IS NULL) = (release_reason IS NULL))
);
-- At most one live reservation per payment: what ON CONFLICT takes turns on.
CREATE UNIQUE INDEX reservations_live
    ON reservations (citizen_id, program_code, period, holder_key)
    WHERE released_at IS NULL;
-- A payer's live reservations of a period (ReleaseReservations).
CREATE INDEX reservations_by_holder
    ON reservations (holder, program_code, period)
    WHERE released_at IS NULL;

CREATE FUNCTION refuse_reservation_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'reservations are released, never deleted';
    END IF;
    IF OLD.released_at IS NOT NULL THEN
        RAISE EXCEPTION 'a released reservation does not change';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER reservations_release_only BEFORE UPDATE OR DELETE ON reservations
    FOR EACH ROW EXECUTE FUNCTION refuse_reservation_rewrite();

-- A second payer's request for a payment another held, answered ALREADY_RESERVED: once
-- per holder's reservation and claimant, kept for investigators.
CREATE TABLE duplicate_entitlements (
    entitlement_id  UUID PRIMARY KEY,
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,
    period          TEXT NOT NULL,
    holder          TEXT NOT NULL,
    claimant        TEXT NOT NULL,
    reservation_id  UUID NOT NULL REFERENCES reservations (reservation_id),
    detected_at     BIGINT NOT NULL,
    UNIQUE (reservation_id, claimant)
);
CREATE INDEX duplicate_entitlements_newest
    ON duplicate_entitlements (detected_at DESC, entitlement_id DESC);
