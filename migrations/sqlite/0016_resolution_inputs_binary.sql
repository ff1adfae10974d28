-- The resolution read model (0012) holds a citizen's preferences in a binary encoding
-- (`inputs`: a format byte, then postcard; store/resolution_model.rs) instead of JSON
-- text: about half the row. A row written before this migration keeps its JSON
-- `preferences` and is still read; the next write of its citizen rewrites it in the new
-- form. (PostgreSQL: 0018, which says why.) SQLite cannot drop a NOT NULL in place, so
-- the table is rebuilt, its rows copied as they are.
CREATE TABLE resolution_inputs_new (
    citizen_id  TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    preferences TEXT,
    inputs      BLOB,
    CHECK ((preferences IS NULL) <> (inputs IS NULL))
) WITHOUT ROWID;
INSERT INTO resolution_inputs_new (citizen_id, status, preferences)
    SELECT citizen_id, status, preferences FROM resolution_inputs;
DROP TABLE resolution_inputs;
ALTER TABLE resolution_inputs_new RENAME TO resolution_inputs;
