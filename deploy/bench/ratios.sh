#!/usr/bin/env bash
# Issue 13's ratios in one run: every bulk path of the registry beside PostgreSQL's own
# ceiling for it, measured one after the other on the same machine, then the same paths
# on the embedded SQLite, and a table of the ratios against their targets.
#
#   deploy/bench/ratios.sh                 # 1 M citizens: about 15 minutes on 2 cores
#   CITIZENS=100000 deploy/bench/ratios.sh # a quick run
#   SQLITE=0 deploy/bench/ratios.sh        # PostgreSQL only
#
# It loads a fresh demo population into database $DB (dropped first if it exists) with
# `demo-data --into-store`, lets a registry number the load's events and build its sync
# digest, runs VACUUM ANALYZE (as autovacuum would have), and then runs, against one
# registry on that database:
#   health (the transport's ceiling), pk-any / model-any / batch-resolve twice in turn,
#   batch-resolve of 100 k and of 5 M ids (server RSS), copy-accounts then sync-accounts
#   with feed-lag beside it, copy-citizens then sync-citizens, and `check`; beside each
#   sync stream, the WAL PostgreSQL wrote per record and how much of it was full-page
#   images (`pg_stat_wal`, the whole server's: nothing else should run meanwhile).
# With SQLITE=1 (the default) it loads the same population into a SQLite file under
# $SQLITE_DIR and runs batch-resolve, sync-accounts and sync-citizens there.
# Figures are only comparable within one run: the registry, the database and the load
# generator share the machine's cores (the README's Benchmarks section).
#
# Env: B (the binary, default target/release/payout-registry), CITIZENS (1000000),
# PGHOST/PGPORT (127.0.0.1:5432), DB (payout_ratios), SQLITE (1), SQLITE_DIR
# (a new temp dir), LISTEN (127.0.0.1:50081), METRICS (127.0.0.1:9481).
set -euo pipefail
B=${B:-target/release/payout-registry}
CITIZENS=${CITIZENS:-1000000}
HOST=${PGHOST:-127.0.0.1}
PORT=${PGPORT:-5432}
DB=${DB:-payout_ratios}
SQLITE=${SQLITE:-1}
LISTEN=${LISTEN:-127.0.0.1:50081}
METRICS=${METRICS:-127.0.0.1:9481}
URL="postgres://postgres@$HOST:$PORT/$DB"
work=$(mktemp -d)
sqlite_dir=${SQLITE_DIR:-$work/sqlite}
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=deploy/bench/common.sh
. "$(dirname "$0")/common.sh"
psql_db() { psql -h "$HOST" -p "$PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 "$@"; }
log() { echo "== $*" >&2; }
# The last number before "$2" on the line of $1 that starts with "$3".
figure() { grep -m1 "^$3" "$1" | grep -oE "[0-9.]+ $2" | tail -1 | awk '{print $1}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }

# A registry on database URL $1 with data dir $2.
start_registry() {
  bench_config "$work/registry.toml" "$1" "$LISTEN" \
    '"accounts.write", "accounts.verify", "accounts.read", "resolve", "resolve.full", "sync.population", "events.subscribe", "events.all"' \
    "data_dir = \"$2\"" "metrics_listen = \"$METRICS\"" -- '[access_log]' "spool_dir = \"$2/spool\""
  mkdir -p "$2"
  "$B" --config "$work/registry.toml" serve & pid=$!
  wait_for_registry "$LISTEN" "$pid"
}
stop_registry() { kill "$pid"; wait "$pid" || true; pid=; }
gauge() { curl -s "http://$METRICS/metrics" | awk -v g="$1" '$1 == g {print $2}'; }
# A load leaves its events for the sequencer and the digest to catch up with; that takes
# both cores for a while, so nothing is measured before it is done.
wait_for_feed() {
  local start=$SECONDS
  sleep 2
  while :; do
    backlog=$(gauge payout_registry_feed_sequencer_backlog)
    digest=$(gauge payout_registry_digest_lag_events)
    [ "${backlog:-1}" = 0 ] && [ "${digest:-1}" = 0 ] && break
    sleep 5
  done
  log "events numbered and digest built in $((SECONDS - start)) s"
}
A="--addr http://$LISTEN --token benchtoken"
out=$work/out
: > "$out"
run() { log "$*"; "$B" bench "$@" $A 2>&1 | tee -a "$work/last" "$out" >&2; }
measure() { : > "$work/last"; run "$@"; }
now() { date +%s.%N; }
# The server's WAL so far: full-page images, bytes (pg_stat_wal, PostgreSQL 14+).
wal_mark() { psql_db -Atc 'SELECT wal_fpi, wal_bytes FROM pg_stat_wal' | tr '|' ' '; }
# "KB of WAL per record, full-page images per record" between two marks, over $3 records.
wal_per_record() {
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    printf "%.1f KB, %.2f full-page images", (y[2] - x[2]) / n / 1024, (y[1] - x[1]) / n }'
}
load() {
  local start
  start=$(now)
  "$B" demo-data --citizens "$CITIZENS" --seed 21 --into-store >&2
  awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

# PostgreSQL: load, catch up, VACUUM, then the paths and their baselines.
nproc_=$(nproc)
log "PostgreSQL $HOST:$PORT/$DB, $CITIZENS citizens, $nproc_ cores"
psql -h "$HOST" -p "$PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
pg_load=$(DATABASE_URL=$URL load)
log "load: $CITIZENS citizens in $pg_load s"
start_registry "$URL" "$work/pg"
wait_for_feed
psql_db -qc 'VACUUM ANALYZE'
run health --concurrency 8 --seconds 10
pk=(); br=()
for round in 1 2; do
  measure pk-any --database-url "$URL" --demo-citizens "$CITIZENS" --keys 1000 --concurrency 1
  pk+=("$(figure "$work/last" ids/s pk-any:)")
  measure model-any --database-url "$URL" --demo-citizens "$CITIZENS" --keys 1000 --concurrency 1
  model=$(figure "$work/last" ids/s model-any:)
  measure batch-resolve --demo-citizens "$CITIZENS" --ids "$CITIZENS"
  br+=("$(figure "$work/last" calls/s batch-resolve)")
done
measure batch-resolve --demo-citizens "$CITIZENS" --ids 100000 --server-pid "$pid"
rss_small=$(grep '^server RSS' "$work/last" | grep -oE '[0-9.]+ MiB peak' | awk '{print $1}')
measure batch-resolve --demo-citizens "$CITIZENS" --ids 5000000 --server-pid "$pid"
rss_big=$(grep '^server RSS' "$work/last" | grep -oE '[0-9.]+ MiB peak' | awk '{print $1}')
measure copy-accounts --database-url "$URL" --records 100000
copy_accounts=$(figure "$work/last" rows/s copy-accounts:)
# The feed's lag measured while the SyncAccounts stream runs: 2,000 writes over 20 s
# (the stream takes about 30 s on 2 cores), so that its p99 is the 20th slowest, not the
# 8th of an 8-second window (in 16 such runs on one 1 M database, its commit-to-numbered
# p99 bucket ranged from 25 to 500 ms).
: > "$work/lag"
( sleep 2; "$B" bench feed-lag $A --rate 100 --seconds 20 --metrics-addr "$METRICS" > "$work/lag" 2>&1 ) & lagger=$!
wal_before=$(wal_mark)
measure sync-accounts --records 200000
wal_accounts=$(wal_per_record "$wal_before" "$(wal_mark)" 200000)
wait "$lagger" || true
cat "$work/lag" >&2
sync_accounts=$(figure "$work/last" calls/s sync-accounts)
# Commit to receipt lies between the write's answer to receipt and its send to receipt.
lag_p99=$(grep -m1 '^feed-lag (per event' "$work/lag" | grep -oE 'p99 [0-9.]+' | awk '{print $2}')
lag_p99_send=$(grep -m1 '^feed-lag: ' "$work/lag" | grep -oE 'p99 [0-9.]+' | head -1 | awk '{print $2}')
# Commit to receipt, the feed's lag, is three parts: the server's wait from the write's
# commit until it sees the event numbered (payout_registry_feed_numbering_wait_seconds,
# read as a histogram bucket's bound), the answer's flight to the client (sent at once;
# loopback), and the answer's arrival to the event's receipt. The table adds the first and
# the last p99s: the p99 of their sum is at most that plus the answer's flight.
numbering_p99=$(grep -m1 '^commit to numbered' "$work/lag" | grep -oE 'p99 <= [0-9.]+' | awk '{print $3}')
lag_commit=$(awk -v a="${numbering_p99:-}" -v b="${lag_p99:-}" 'BEGIN { if (a != "" && b != "") printf "%.1f", a + b; else print "?" }')
measure copy-citizens --database-url "$URL" --records 100000
copy_citizens=$(figure "$work/last" rows/s copy-citizens:)
wal_before=$(wal_mark)
measure sync-citizens --records 100000
wal_citizens=$(wal_per_record "$wal_before" "$(wal_mark)" 100000)
sync_citizens=$(figure "$work/last" calls/s sync-citizens)
stop_registry
log "check"
if DATABASE_URL=$URL "$B" check >&2; then check=clean; else check="DIFFERENCES"; fi

# SQLite: the same load and paths, on a file of its own.
if [ "$SQLITE" = 1 ]; then
  log "SQLite $sqlite_dir"
  rm -rf "$sqlite_dir" && mkdir -p "$sqlite_dir"
  sq_url="sqlite://$sqlite_dir/registry.db"
  sq_load=$(DATABASE_URL=$sq_url PAYOUT_REGISTRY__DATA_DIR=$sqlite_dir load)
  log "load: $CITIZENS citizens in $sq_load s"
  start_registry "$sq_url" "$sqlite_dir"
  wait_for_feed
  measure batch-resolve --demo-citizens "$CITIZENS" --ids "$CITIZENS"
  sq_br=$(figure "$work/last" calls/s batch-resolve)
  measure sync-accounts --records 200000
  sq_sync_accounts=$(figure "$work/last" calls/s sync-accounts)
  measure sync-citizens --records 100000
  sq_sync_citizens=$(figure "$work/last" calls/s sync-citizens)
  stop_registry
fi

# The table (stdout).
echo "machine: $nproc_ cores; $CITIZENS citizens; PostgreSQL $HOST:$PORT"
printf '%-52s %-30s %s\n' "path" "figure" "ratio (target)"
printf '%-52s %-30s %s\n' "demo-data --into-store, PostgreSQL" "$pg_load s" \
  "$(ratio "$CITIZENS" "$pg_load") citizens/s; 100 M in $(awk -v t="$pg_load" -v n="$CITIZENS" 'BEGIN { printf "%.1f", t * 1e8 / n / 3600 }') h (<= 60 s at 1 M)"
for i in 0 1; do
  printf '%-52s %-30s %s\n' "BatchResolve / pk-any, round $((i + 1))" "${br[$i]} / ${pk[$i]} ids/s" \
    "$(ratio "${br[$i]}" "${pk[$i]}") (>= 0.5)"
done
printf '%-52s %-30s %s\n' "  the read model's own select (model-any) / pk-any" "$model / ${pk[1]} ids/s" \
  "$(ratio "$model" "${pk[1]}")"
printf '%-52s %-30s %s\n' "server RSS, 5 M-id / 100 k-id BatchResolve" "$rss_big / $rss_small MiB" \
  "$(ratio "$rss_big" "$rss_small") (<= 1.2)"
printf '%-52s %-30s %s\n' "SyncAccounts / COPY" "$sync_accounts / $copy_accounts rows/s" \
  "$(ratio "$sync_accounts" "$copy_accounts") (>= 0.1)"
printf '%-52s %-30s %s\n' "  WAL per SyncAccounts record" "$wal_accounts" "(the feed-lag writes included)"
printf '%-52s %-30s %s\n' "change-feed lag p99 during SyncAccounts" \
  "$lag_commit ms" "(<= 100 ms; commit to receipt: commit to numbered <= ${numbering_p99:-?} + answer to receipt ${lag_p99:-?})"
printf '%-52s %-30s %s\n' "  a write's send to receipt of its event, p99" "${lag_p99_send:-?} ms" \
  "(the write's own time included)"
printf '%-52s %-30s %s\n' "SyncCitizens / COPY" "$sync_citizens / $copy_citizens rows/s" \
  "$(ratio "$sync_citizens" "$copy_citizens") (>= 0.2)"
printf '%-52s %-30s %s\n' "  WAL per SyncCitizens record" "$wal_citizens" ""
printf '%-52s %-30s %s\n' "check after the load and the syncs" "$check" ""
if [ "$SQLITE" = 1 ]; then
  printf '%-52s %-30s %s\n' "SQLite / PostgreSQL: demo-data load (rate)" "$sq_load s / $pg_load s" \
    "$(ratio "$pg_load" "$sq_load") (>= 0.5)"
  printf '%-52s %-30s %s\n' "SQLite / PostgreSQL: BatchResolve" "$sq_br / ${br[1]} ids/s" \
    "$(ratio "$sq_br" "${br[1]}") (>= 0.5)"
  printf '%-52s %-30s %s\n' "SQLite / PostgreSQL: SyncAccounts" "$sq_sync_accounts / $sync_accounts rows/s" \
    "$(ratio "$sq_sync_accounts" "$sync_accounts") (>= 0.5)"
  printf '%-52s %-30s %s\n' "SQLite / PostgreSQL: SyncCitizens" "$sq_sync_citizens / $sync_citizens rows/s" \
    "$(ratio "$sq_sync_citizens" "$sync_citizens") (>= 0.5)"
fi
psql -h "$HOST" -p "$PORT" -U postgres -qc "DROP DATABASE $DB"
