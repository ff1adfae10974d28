-- Reservations cost a payroll's batch less (issue 16's target: reserving at >= 0.7x the
-- plain BatchResolve rate). EXPLAIN (ANALYZE, BUFFERS, WAL) of a batch of 1,000 into a
-- 600 k-row copy: 6 MB of WAL after a checkpoint, one full-page image per row, because
-- the live index began with the citizen. A payroll's citizens arrive in no order, so each
-- row landed on a different leaf, and those leaves held every earlier period's entries
-- too: an index that only grows (reservations are released, never deleted).
--
-- * `reservations_live` now begins with the payment (program, period, holder_key): a
--   payroll run writes only its own period's part of the index, whatever the history.
-- * One index fewer: the primary key (holder, program_code, period, reservation_id) also
--   serves ReleaseReservations (a holder's live reservations of a period), so
--   `reservations_by_holder` goes. Its rows arrive in key order (one holder and period
--   per batch, time-ordered UUIDv7 ids). reservation_id stays unique by construction (a
--   UUIDv7 made by the write path); nothing looks a reservation up by its id alone.
-- * duplicate_entitlements no longer checks its reservation_id against reservations: the
--   write path records a duplicate only for a reservation it has just read.
ALTER TABLE duplicate_entitlements DROP CONSTRAINT duplicate_entitlements_reservation_id_fkey;
ALTER TABLE reservations DROP CONSTRAINT reservations_pkey;
ALTER TABLE reservations ADD PRIMARY KEY (holder, program_code, period, reservation_id);
DROP INDEX reservations_by_holder;
DROP INDEX reservations_live;
CREATE UNIQUE INDEX reservations_live
    ON reservations (program_code, period, holder_key, citizen_id)
    WHERE released_at IS NULL;
