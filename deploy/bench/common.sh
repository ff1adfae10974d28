# Shared by the benchmark scripts beside it (sourced, not run).

# Writes to FILE the configuration of a registry for benchmarks, on database URL at
# LISTEN: log level warn, rate limits out of the way, one client "bench" (token
# "benchtoken") with SCOPES (a TOML list's items). Further arguments are top-level lines,
# then, after a "--", tables placed before the client's.
#   bench_config FILE URL LISTEN SCOPES [LINE ...] [-- TABLE-LINE ...]
bench_config() {
  local file=$1 url=$2 listen=$3 scopes=$4 sha
  shift 4
  local top=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do top+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  sha=$("$B" hash-token benchtoken | awk '/sha256/{print $2}')
  printf '%s\n' "listen = \"$listen\"" "database_url = \"$url\"" 'log_level = "warn"' "${top[@]}" \
    '[rate_limits]' \
    'write = { per_second = 1e6, burst = 1e6 }' 'read = { per_second = 1e6, burst = 1e6 }' \
    'resolve = { per_second = 1e6, burst = 1e6 }' 'oversight = { per_second = 10.0, burst = 10.0 }' \
    'bulk = { per_second = 1e7, burst = 1e7 }' 'max_concurrent_calls = 4096' \
    "$@" \
    '[[clients]]' 'id = "bench"' "token_sha256 = \"$sha\"" 'providers = ["970418"]' \
    "scopes = [$scopes]" > "$file"
}

# Waits (up to two minutes) until the registry at LISTEN answers Health/Check. With PID,
# the registry's process: if it exits first (a port or spool still held by an instance
# shutting down, a bad configuration), says so at once with its exit status instead of
# waiting out the two minutes; its own error is on stderr above.
#   wait_for_registry LISTEN [PID]
wait_for_registry() {
  local status
  for _ in $(seq 120); do
    "$B" bench health --addr "http://$1" --token benchtoken --concurrency 1 --seconds 1 \
      >/dev/null 2>&1 && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
      wait "$2" && status=0 || status=$?
      echo "the registry at $1 exited (status $status) before answering" >&2
      return 1
    fi
    sleep 1
  done
  echo "the registry at $1 did not start" >&2
  return 1
}
