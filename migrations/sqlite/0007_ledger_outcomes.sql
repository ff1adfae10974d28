-- The sync ledger remembers a refusal in full (field and message), so that a record sent
-- again with the same record id and version is answered with the recorded outcome.
-- Same columns as migrations/postgres/0007_ledger_outcomes.sql, in SQLite's dialect.

ALTER TABLE sync_records ADD COLUMN rejected_field TEXT;
ALTER TABLE sync_records ADD COLUMN rejected_message TEXT;
