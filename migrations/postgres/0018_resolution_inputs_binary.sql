-- The resolution read model (0012) holds a citizen's preferences in a binary encoding
-- (`inputs`: a format byte, then postcard; store/resolution_model.rs) instead of JSON
-- text. A row written before this migration keeps its JSON `preferences` and is still
-- read; the next write of its citizen rewrites it in the new form, and `check` compares
-- what either form holds with the source tables.
--
-- Why: the model is what every Resolve and BatchResolve reads, one row per citizen, and
-- the JSON made that row ~342 bytes (a preference with its account snapshot: ~298 bytes
-- of JSON, with the account id as 36 hex characters and each instant as 16 digits under
-- its key). At 1 M citizens the table was 381 MB against 128 MB of shared buffers here,
-- so most of a BatchResolve's probes copied a page in from the OS cache. The same read
-- straight on PostgreSQL (`bench model-any`, 1,000 keys per select, one connection) ran
-- at 148.6 k ids/s on the JSON rows, compacted, and 184.1 k on rows of the binary form's
-- size (157 MB), against 315-353 k for the citizens' primary key alone.
--
-- Metadata only on a populated table: `inputs` is nullable without a default, dropping
-- NOT NULL changes no row, and the CHECK (exactly one of the two forms) is NOT VALID
-- (every existing row has its `preferences`; new rows and updates are checked).
ALTER TABLE resolution_inputs ADD COLUMN inputs BYTEA;
ALTER TABLE resolution_inputs ALTER COLUMN preferences DROP NOT NULL;
ALTER TABLE resolution_inputs ADD CONSTRAINT resolution_inputs_one_form
    CHECK ((preferences IS NULL) <> (inputs IS NULL)) NOT VALID;
