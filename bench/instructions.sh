#!/usr/bin/env bash
# bench/instructions.sh [COUNT]: CPU instructions per registration on one agent, counted by
# callgrind, which counts instructions rather than seconds: the same binary and load give the
# same figure within about one percent whatever else the machine is doing, where wrk's
# writes/s move by a fifth from run to run. For comparing two builds of the owner's write
# path (run each, alternated).
# One fresh agent on the embedded store under valgrind; 8 threads of bench/register_count.py
# each register COUNT (default 3000) new ids over 32 services. Only instructions inside the
# HTTP connection tasks are counted (parse, route, write, answer), not the store's writer and
# checkpointer threads, whose share depends on timing. Prints the total and the count per
# registration. Needs symbols: CHORDCTL defaults to target/profiling/chordctl (built with
# `cargo build --profile profiling` when missing). Asserts nothing.
set -euo pipefail
COUNT=${1:-3000}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_profiling_binary
bench_needs valgrind callgrind_annotate python3
bench_workdir instructions
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$D/callgrind.out" \
    --collect-atstart=no --toggle-collect='*serve_app_with*' \
    "$BIN" agent create --bind 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$D/data" \
    >"$D/agent.log" 2>&1 &
AGENT=$!
BENCH_PIDS=("$AGENT")
# valgrind starts the agent some 50 times slower.
HTTP=$(bench_http_of "$D/agent.log" 60)
python3 bench/register_count.py "$HTTP" "$COUNT" 8 ins
kill "$AGENT"
wait "$AGENT" 2>/dev/null || true
BENCH_PIDS=()
total=$(callgrind_annotate "$D/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
writes=$((COUNT * 8))
echo "instructions on the request path: $total for $writes registrations, $((total / writes)) each"
