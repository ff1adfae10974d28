-- account_history keeps one index, its primary key (account_id, version); see
-- migrations/postgres/0021. Here an as-of read then searches the primary key's index by
-- account_id (EXPLAIN QUERY PLAN: sqlite_autoindex_account_history_1), instead of this
-- index and a sort.
DROP INDEX IF EXISTS account_history_as_of;
