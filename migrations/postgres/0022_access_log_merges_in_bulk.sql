-- The access log's index of citizens (0017) keeps more entries in its pending list: the
-- registry merges the list when this instance has added 250,000 entries or five seconds
-- after the first (background/access_log.rs), instead of every half second. PostgreSQL
-- merges a pending list key by key, rewriting each key's entry in its leaf page, so a
-- merge costs less per entry the more it takes: on the 1 M population (two cores) 65 k
-- entries cost 4.2-5.5 us each, 1 M entries 2.35 us each. The default limit (4 MB,
-- about 170,000 entries of 1,000-citizen reads) would have the writer merge first; at
-- 32 MB it is only the backstop for several instances' entries together. A search for a
-- citizen reads the whole pending list (about 0.26 us an entry).
ALTER INDEX access_log_by_citizen_key SET (gin_pending_list_limit = 32768);
