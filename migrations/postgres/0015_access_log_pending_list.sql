-- The GIN index over the citizens of a read of many (0013) takes new entries into its
-- pending list again (fastupdate, the list's default limit of 4 MB), and the registry's
-- access-log cleaner merges the list into the index every half second, off the read
-- path (`gin_clean_pending_list`; background/access_log.rs). 0013 turned fastupdate off
-- because the writer whose row overflowed the list merged all of it while the reads
-- waiting for the log stalled; with the list merged in the background, a writer only
-- appends. Each 1,000-id row cost 5.4-6.4 ms of GIN descents at the writer; BatchResolve
-- of 1 M ids on a 300 k population, two cores: 84.9-85.2 k ids/s against 71.7-78.5 k.
-- A search for a citizen also reads the pending list: under a second of entries.
ALTER INDEX access_log_by_citizen_in_batch SET (fastupdate = on);
