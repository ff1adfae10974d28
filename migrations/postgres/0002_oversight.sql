-- Oversight: who read which citizen's data, and payers' reports of failed credits.

-- Every read of a citizen's data (Decree 13/2023/ND-CP): written in batches by the
-- access-log writer, never updated or deleted by the service.
CREATE TABLE access_log (
    id          BIGSERIAL PRIMARY KEY,
    citizen_id  TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    method      TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    accessed_at BIGINT NOT NULL,
    request_id  UUID NOT NULL
);
CREATE INDEX access_log_by_citizen ON access_log (citizen_id, id);
CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION refuse_history_rewrite();

-- A payer's report that a credit failed (rule 6); the account is suspended with it.
CREATE TABLE payout_failures (
    failure_id      UUID PRIMARY KEY,
    account_id      UUID NOT NULL REFERENCES accounts (account_id),
    citizen_id      TEXT NOT NULL,
    program_code    TEXT NOT NULL,          -- '' when not given
    failure_code    TEXT NOT NULL,
    payer_reference TEXT NOT NULL,
    failed_at       BIGINT,
    reported_at     BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    reason          TEXT NOT NULL
);
CREATE INDEX payout_failures_by_account ON payout_failures (account_id, reported_at);
CREATE TRIGGER payout_failures_append_only BEFORE UPDATE OR DELETE ON payout_failures
    FOR EACH ROW EXECUTE FUNCTION refuse_history_rewrite();
