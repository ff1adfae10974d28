-- Who vouched, and as what. Every assertion about an account counts only from the party
-- entitled to make it (src/domain/assertion.rs); the capacity it was accepted in is kept
-- with it, so an investigator can tell a bank's confirmation from a commune verifier's
-- or the population platform's.
--
-- `holder_name` is, from now on, only the provider's statement (or the one population
-- sync relays); a holder name typed by anyone else is kept in `declared_holder_name` and
-- never satisfies NAME_MATCH. Rows written before this migration keep what they had:
-- their capacity is unknown (NULL).

ALTER TABLE accounts ADD COLUMN declared_holder_name TEXT;
ALTER TABLE accounts ADD COLUMN verification_capacity TEXT
    CHECK (verification_capacity IN ('PROVIDER', 'VERIFIER', 'POPULATION_SYNC', 'PAYER'));

ALTER TABLE account_history ADD COLUMN declared_holder_name TEXT;
ALTER TABLE account_history ADD COLUMN verification_capacity TEXT;
-- The capacity the actor of this change vouched in: the verifier of a VERIFIED change,
-- the provider or payer behind a REJECTED one or a suspension for a payout failure.
ALTER TABLE account_history ADD COLUMN capacity TEXT;

ALTER TABLE events ADD COLUMN actor_capacity TEXT;
ALTER TABLE payout_failures ADD COLUMN capacity TEXT;
