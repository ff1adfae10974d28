-- A transaction that writes events no longer sends `NOTIFY payout_events` (the statement
-- trigger of 0004). Each instance's writers wake their own instance's sequencer in
-- process after they commit, and every instance's sequencer numbers every committed
-- event, so the notification only woke other instances early for events their own
-- writers did not write; tools that write events directly are numbered within the
-- sequencer's one-second safety tick.
--
-- Why: PostgreSQL serializes the commits of all transactions that sent a NOTIFY: each
-- takes one lock for the whole cluster before it commits and holds it until its commit
-- is flushed (PreCommit_Notify), so notifications queue in commit order. Every write,
-- every sync batch and every sequencer round took it: a round's commit waited behind a
-- bulk batch's, WAL flush included. Beside a SyncAccounts stream on the 1 M population
-- (two cores), the busiest wait of the database's active sessions was that lock at
-- COMMIT (102 of 467 samples, against 52 on WALSync), and the unary writes'
-- commit-to-numbered p99 was 125 ms to 2.5 s. The sequencer's own NOTIFY (payout_feed,
-- which wakes the other instances' followers) stays: one per round.
DROP TRIGGER events_written ON events;
DROP FUNCTION events_written();
