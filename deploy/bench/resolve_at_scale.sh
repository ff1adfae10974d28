#!/usr/bin/env bash
# Resolve at population scale: loads a demo population of CITIZENS through the bulk path
# (`demo-data --into-store`, the same batch transactions as the sync streams) into its own
# database, then measures unary Resolve and BatchResolve on it against a registry of its own,
# with the resolution cache off: what is compared is the database's work at each size.
#
#   deploy/bench/resolve_at_scale.sh payout_1m 1000000
#   deploy/bench/resolve_at_scale.sh payout_10m 10000000     # 37 min of load, 6 of numbering, 56 GB
#
# A database that already holds CITIZENS citizens is measured again without reloading.
# Env: B (the binary, default target/release/payout-registry), PGHOST/PGPORT (default
# 127.0.0.1:5432), LISTEN (default 127.0.0.1:50071). The load's time goes to stdout; the
# figures are the load generator's own lines. Compare runs only within one session on one
# machine, as ratios (the README's Benchmarks section).
set -euo pipefail
DB=${1:?database name}
CITIZENS=${2:?number of citizens}
B=${B:-target/release/payout-registry}
HOST=${PGHOST:-127.0.0.1}
PORT=${PGPORT:-5432}
LISTEN=${LISTEN:-127.0.0.1:50071}
URL="postgres://postgres@$HOST:$PORT/$DB"
# shellcheck source=deploy/bench/common.sh
. "$(dirname "$0")/common.sh"
psql_db() { psql -h "$HOST" -p "$PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 "$@"; }

if ! psql -h "$HOST" -p "$PORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  psql -h "$HOST" -p "$PORT" -U postgres -c "CREATE DATABASE $DB"
fi
have=$(psql_db -Atc "SELECT to_regclass('citizens') IS NOT NULL" )
if [ "$have" = t ]; then have=$(psql_db -Atc "SELECT count(*) FROM citizens"); else have=0; fi
if [ "$have" -lt "$CITIZENS" ]; then
  [ "$have" -eq 0 ] || { echo "$DB holds $have citizens, not $CITIZENS: drop it first" >&2; exit 1; }
  start=$(date +%s)
  DATABASE_URL=$URL "$B" demo-data --citizens "$CITIZENS" --seed 21 --into-store
  echo "load: $CITIZENS citizens in $(( $(date +%s) - start )) s"
fi
# A load leaves its events waiting for the sequencer (about 3.5 per citizen): the first
# registry started on the database numbers them, which takes both cores for minutes. Let
# that finish before anything is measured, then VACUUM: statistics and visibility maps as
# autovacuum would have left them.
if [ "$(psql_db -Atc "SELECT EXISTS (SELECT 1 FROM feed_pending)")" = t ]; then
  numbering=$(mktemp --suffix=.toml)
  printf '%s\n' "listen = \"$LISTEN\"" "database_url = \"$URL\"" 'log_level = "warn"' > "$numbering"
  start=$(date +%s)
  "$B" --config "$numbering" serve & numberer=$!
  while [ "$(psql_db -Atc "SELECT EXISTS (SELECT 1 FROM feed_pending)")" = t ]; do sleep 5; done
  kill "$numberer"; wait "$numberer" || true
  rm -f "$numbering"
  echo "events numbered in $(( $(date +%s) - start )) s"
fi
psql_db -qc 'VACUUM ANALYZE'
psql_db -Atc "SELECT 'population: ' || (SELECT count(*) FROM citizens) || ' citizens, ' ||
  (SELECT count(*) FROM accounts) || ' accounts, database ' || pg_size_pretty(pg_database_size(current_database()))"

conf=$(mktemp --suffix=.toml)
ids=$(mktemp)
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -f "$conf" "$ids"' EXIT
bench_config "$conf" "$URL" "$LISTEN" '"resolve", "resolve.full"' 'resolution_cache_entries = 0'
"$B" --config "$conf" serve & pid=$!
A="--addr http://$LISTEN --token benchtoken"
wait_for_registry "$LISTEN" "$pid"
# 200 k ids drawn from the whole population, whatever its size.
psql_db -Atc "COPY (SELECT citizen_id FROM citizens ORDER BY random() LIMIT 200000) TO STDOUT" > "$ids"
echo "ids sampled: $(wc -l < "$ids")"
for c in 8 32; do
  "$B" bench resolve $A --ids-file "$ids" --concurrency "$c" --seconds 15
done
"$B" bench batch-resolve $A --demo-citizens "$CITIZENS" --ids 1000000
DATABASE_URL=$URL "$B" bench pk-any $A --demo-citizens "$CITIZENS" --keys 1000 --concurrency 1
