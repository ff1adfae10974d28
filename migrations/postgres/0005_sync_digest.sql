-- The sync digest (ChangeFeed.GetSyncDigest): per province, the XOR of the hashes of its
-- live routes (a citizen's default or program preference pointing at a VERIFIED account,
-- the citizen ACTIVE), and their count; see src/domain/digest.rs for the definition.
--
-- The sequencer maintains it in the transaction that assigns feed positions, from a
-- snapshot in which every committed change has its events sequenced: it recomputes the
-- routes of the citizens those events name, and XORs each one's old contribution out of
-- its province and the new one in. So the digest always describes the state at exactly
-- feed position `digest_through`, and a consumer that applied the feed up to that
-- position can compare.

-- The feed position the digest describes; NULL until the first build (which the
-- sequencer makes from every citizen's preferences, once).
ALTER TABLE feed_head ADD COLUMN digest_through BIGINT;

-- Each citizen's contribution (hex SHA-256 XOR, count), kept to XOR it out on change.
-- Citizens with no live route have no row.
CREATE TABLE digest_citizens (
    citizen_id TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    routes     BIGINT NOT NULL
);

CREATE TABLE digest_provinces (
    province TEXT PRIMARY KEY,
    digest   TEXT NOT NULL,
    routes   BIGINT NOT NULL
);
