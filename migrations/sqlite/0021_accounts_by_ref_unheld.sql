-- An account's key is in one index, not two: `accounts_by_ref` holds only accounts that
-- are not VERIFIED or SUSPENDED, whose keys `accounts_one_holder` holds already; see
-- migrations/postgres/0027.
CREATE INDEX accounts_by_ref_unheld ON accounts (kind, provider_code, account_ref)
    WHERE status NOT IN ('VERIFIED', 'SUSPENDED');
DROP INDEX accounts_by_ref;
