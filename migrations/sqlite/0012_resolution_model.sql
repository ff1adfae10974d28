-- The resolution read model (issue 13); see migrations/postgres/0012 for what it holds.
CREATE TABLE resolution_inputs (
    citizen_id  TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    preferences TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE read_models (
    name     TEXT PRIMARY KEY,
    built_at INTEGER NOT NULL
);
