-- The resolution read model (issue 13): per citizen, what Resolve and BatchResolve need
-- now, in one row read by primary key instead of a four-table join (citizens,
-- preferences, accounts twice). `preferences` is a JSON array of the citizen's
-- preferences, each with the snapshot of the account it points at and of the previous
-- account (paid during cooling-off); the cooling-off decision itself stays at read time,
-- because it depends on the instant. The write path refreshes a citizen's row in the
-- same transaction as every change to its citizen, accounts or preferences
-- (store/resolution_model.rs); `payout-registry check` compares it with those tables.
--
-- Text keys compare under "C": citizen ids are ASCII digits, so the order is the same
-- as the source tables', and the btree compares bytes instead of calling strcoll.
CREATE TABLE resolution_inputs (
    citizen_id  TEXT COLLATE "C" PRIMARY KEY,
    status      TEXT NOT NULL,
    preferences TEXT NOT NULL
);

-- Which read models have been built from the source tables. The model is filled by the
-- service's migration step (in citizen-id order, each chunk under the citizens' row
-- locks) and marked here when complete, so an upgrade of a populated database builds it
-- once, before the first Resolve reads it.
CREATE TABLE read_models (
    name     TEXT PRIMARY KEY,
    built_at BIGINT NOT NULL
);
