-- The sync ledger remembers a refusal in full, so that a record sent again with the same
-- record id and version is answered with what the registry decided the first time
-- (APPLIED, or REJECTED with the same reason, field and message), not STALE. A client
-- that resumes a cut stream resends the batches committed after its last
-- acknowledgement; without this, their refusals would never reach it.
--
-- Both columns are set only when `outcome` is a rejection reason. Rows written before
-- this migration have neither: their repeated refusal carries the reason and a message
-- saying it was decided earlier.

ALTER TABLE sync_records ADD COLUMN rejected_field TEXT;    -- the field at fault, if any
ALTER TABLE sync_records ADD COLUMN rejected_message TEXT;  -- the refusal's sentence
