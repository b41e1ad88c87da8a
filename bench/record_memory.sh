#!/usr/bin/env bash
# bench/record_memory.sh [SECS]: what the records an agent holds in memory cost per instance.
# One fresh agent on the embedded store; wrk registers new instance ids into 32 growing
# services for SECS seconds (bench/chordctl_register_new.lua, the body every bench run uses:
# one tag, one metadata pair); the agent is restarted on the same data, and every service is
# read once, which loads its record. Prints the resident memory after the fill, after the
# restart and after the load, and the load's share per instance. Asserts nothing. The 32
# services hold at most 320,000 instances (10,000 each): a fill that reaches that fails
# requests, and the script stops rather than print figures of a fill cut short.
# CHORDCTL=path names the binary (default target/release/chordctl, built if missing).
set -euo pipefail
SECS=${1:-15}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_binary
bench_needs curl jq wrk
bench_workdir records
AGENT=""
HTTP=""
start() {
    : >"$D/agent.log"
    RUST_LOG=warn "$BIN" agent create --bind 127.0.0.1:0 --http 127.0.0.1:0 \
        --data-dir "$D/data" >"$D/agent.log" 2>&1 &
    AGENT=$!
    BENCH_PIDS=("$AGENT")
    HTTP=$(bench_http_of "$D/agent.log")
}
mib() { awk '/VmRSS/{printf "%.1f", $2 / 1024}' "/proc/$AGENT/status"; }
start
BENCH_DIR=bench SVC_PREFIX=mem SERVICES=32 bench_wrk -t2 -c32 -d"${SECS}s" --timeout 10s \
    -s bench/chordctl_register_new.lua "http://$HTTP"
n=0
for s in $(seq 0 31); do
    n=$((n + $(curl -sf "http://$HTTP/v1/services/mem-$s" | jq '.instances | length')))
done
filled=$(mib)
kill "$AGENT"
wait "$AGENT" 2>/dev/null || true
BENCH_PIDS=()
start
# Once it answers, its start (the replay of its log) is over.
curl -sf "http://$HTTP/v1/ring" >/dev/null
restarted=$(mib)
for s in $(seq 0 31); do
    curl -sf "http://$HTTP/v1/services/mem-$s" >/dev/null
done
loaded=$(mib)
echo "instances=$n rss_after_fill_mib=$filled rss_after_restart_mib=$restarted rss_all_loaded_mib=$loaded"
awk -v a="$loaded" -v b="$restarted" -v n="$n" \
    'BEGIN { printf "records in memory: %.0f bytes per instance\n", (a - b) * 1048576 / n }'
