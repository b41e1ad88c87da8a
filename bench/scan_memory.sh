#!/usr/bin/env bash
# bench/scan_memory.sh [SECS]: what an anti-entropy round's range scans hold in memory.
# A ring of two fresh agents on the embedded store (default --replicas: each holds every
# instance, each owns about half); wrk registers new instance ids into 100 growing services
# for SECS seconds (bench/chordctl_register_new.lua) through the first; then each agent's
# resident memory is read every 0.5 s for 75 s, across two periodic rounds (every 30 s), with
# each one's count of tree comparisons beside it. Prints every fifth second and each agent's
# peak. A replica keeps its scan of an owner's range for 10 s (docs/PERFORMANCE.md, "What a
# periodic comparison's scans hold in memory"). Asserts nothing.
# CHORDCTL=path names the binary (default target/release/chordctl, built if missing).
set -euo pipefail
SECS=${1:-40}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_binary
bench_needs curl jq wrk
bench_workdir scans
start() { # NAME [SEED]
    local how=(create)
    [[ -n ${2:-} ]] && how=(join "$2")
    RUST_LOG=warn "$BIN" agent "${how[@]}" --bind 127.0.0.1:0 --http 127.0.0.1:0 \
        --data-dir "$D/$1" >"$D/$1.log" 2>&1 &
    BENCH_PIDS+=("$!")
}
start a
HTTP_A=$(bench_http_of "$D/a.log")
RING_A=$(sed -n 's/.*ring=\([^ ]*\).*/\1/p' "$D/a.log" | head -1)
start b "$RING_A"
HTTP_B=$(bench_http_of "$D/b.log")
for _ in $(seq 100); do
    [[ $(curl -fsS "http://$HTTP_A/v1/ring/nodes" | jq length) == 2 ]] && break
    sleep 0.2
done
BENCH_DIR=bench SVC_PREFIX=scan SERVICES=100 bench_wrk -t2 -c32 -d"${SECS}s" --timeout 10s \
    -s bench/chordctl_register_new.lua "http://$HTTP_A"
echo "instances: $(curl -fsS "http://$HTTP_A/v1/services" | jq '[.[].instances] | add')"
mib() { awk '/VmRSS/{printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
compared() { curl -fsS "http://$1/metrics" | awk '/^chordctl_antientropy_comparisons_total /{print $2}'; }
PEAK_A=0 PEAK_B=0
for i in $(seq 150); do
    a=$(mib "${BENCH_PIDS[0]}") b=$(mib "${BENCH_PIDS[1]}")
    ((a > PEAK_A)) && PEAK_A=$a
    ((b > PEAK_B)) && PEAK_B=$b
    ((i % 10 == 1)) && echo "t=$((i / 2)) s: A ${a} MiB (comparisons $(compared "$HTTP_A")), B ${b} MiB (comparisons $(compared "$HTTP_B"))"
    sleep 0.5
done
echo "peak: A ${PEAK_A} MiB, B ${PEAK_B} MiB"
