#!/usr/bin/env bash
# bench/cache_bound.sh [SECS]: writes into a service that finds the record cache full.
# One fresh agent on the embedded store with its record cache shrunk to 8,000 units (the
# test setting CHORDCTL_TEST_RECORD_CACHE_UNITS; the real bound is 2,097,152): wrk registers
# new ids into 10 services for one second (about 1,200 instances each, 12,000 units in all),
# the agent is restarted on the same data, nine of the services are discovered (which loads
# them into the cache until it is full), then wrk writes into the tenth for SECS seconds
# (bench/chordctl_register.lua with SERVICE and COUNT: 1,000 instances replaced over and over).
# Prints the writes/s and the cache's metrics before and after.
# Asserts nothing. CHORDCTL=path names the binary (default target/release/chordctl).
set -euo pipefail
SECS=${1:-6}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_binary
bench_needs curl jq wrk
bench_workdir cache
AGENT=""
HTTP=""
start() {
    : >"$D/agent.log"
    CHORDCTL_TEST_RECORD_CACHE_UNITS=8000 RUST_LOG=warn "$BIN" agent create \
        --bind 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$D/data" >"$D/agent.log" 2>&1 &
    AGENT=$!
    BENCH_PIDS=("$AGENT")
    HTTP=$(bench_http_of "$D/agent.log")
}
cache() { curl -sf "http://$HTTP/metrics" | grep -E '^chordctl_record_cache' | tr '\n' ' '; echo; }
start
BENCH_DIR=bench SVC_PREFIX=fill SERVICES=10 bench_wrk -t2 -c32 -d1s --timeout 10s \
    -s bench/chordctl_register_new.lua "http://$HTTP"
kill "$AGENT"
wait "$AGENT" 2>/dev/null || true
BENCH_PIDS=()
start
curl -sf "http://$HTTP/v1/ring" >/dev/null
echo -n "instances in fill-1..9:"
for s in $(seq 1 9); do
    echo -n " $(curl -sf "http://$HTTP/v1/services/fill-$s" | jq '.instances | length')"
done
echo
echo "cache before: $(cache)"
BENCH_DIR=bench SERVICE=fill-0 COUNT=1000 bench_wrk -t2 -c32 -d"${SECS}s" --timeout 10s \
    -s bench/chordctl_register.lua "http://$HTTP"
echo "cache after:  $(cache)"
