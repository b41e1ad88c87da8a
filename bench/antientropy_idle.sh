#!/usr/bin/env bash
# bench/antientropy_idle.sh [FILL_SECS] [IDLE_SECS]: what anti-entropy costs a ring at rest.
# Three fresh agents with --replicas 3 on the embedded store; wrk registers new instance ids
# into 32 growing services through the first for FILL_SECS seconds (default 20); then, with
# no load for IDLE_SECS seconds (default 62: two of the periodic full rounds, one every 30 s),
# prints each agent's CPU seconds, peak (while idle, where Linux can tell) and current
# resident memory, and the bytes its store returned. Asserts nothing. CHORDCTL=path names the binary (default
# target/release/chordctl, built if missing).
set -euo pipefail
FILL=${1:-20}
IDLE=${2:-62}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_binary
bench_needs curl jq wrk
bench_workdir antientropy
HTTPS=()
RING=""
start() {
    local name=$1
    shift
    RUST_LOG=warn "$BIN" agent "$@" --bind 127.0.0.1:0 --http 127.0.0.1:0 --replicas 3 \
        --data-dir "$D/$name" >"$D/$name.log" 2>&1 &
    BENCH_PIDS+=($!)
    local http
    http=$(bench_http_of "$D/$name.log")
    HTTPS+=("$http")
    RING=$(sed -n 's/.*ring=\([^ ]*\).*/\1/p' "$D/$name.log" | head -1)
}
start a0 create
SEED=$RING
start a1 join "$SEED"
start a2 join "$SEED"
n=0
for _ in $(seq 150); do
    n=$(curl -fsS "http://${HTTPS[0]}/v1/ring/nodes" 2>/dev/null | jq length 2>/dev/null || true)
    [[ $n == 3 ]] && break
    sleep 0.2
done
[[ $n == 3 ]] || { echo "the ring did not form (the first agent lists ${n:-no} nodes)" >&2; exit 1; }
BENCH_DIR=bench SVC_PREFIX=ae SERVICES=32 bench_wrk -t2 -c32 -d"${FILL}s" --timeout 10s \
    -s bench/chordctl_register_new.lua "http://${HTTPS[0]}"
# Agent $1's CPU ticks and store bytes read so far, in TICKS and READ; exits if it has stopped.
sample() {
    local p=${BENCH_PIDS[$1]}
    kill -0 "$p" 2>/dev/null || { echo "agent $1 has stopped:" >&2; tail -5 "$D/a$1.log" >&2; exit 1; }
    TICKS=$(awk '{print $14 + $15}' "/proc/$p/stat")
    READ=$(curl -fsS "http://${HTTPS[$1]}/metrics" |
        awk '/^chordctl_store_read_bytes_total/ {print $2}')
    [[ -n $TICKS && -n $READ ]] || { echo "agent $1 gave no CPU or store figures" >&2; exit 1; }
}
sleep 2
declare -a T0 R0
for i in 0 1 2; do
    # The peak from here on is the idle ring's (Linux resets VmHWM on "5"), not the fill's.
    echo 5 >"/proc/${BENCH_PIDS[i]}/clear_refs" 2>/dev/null || true
    sample "$i"
    T0[i]=$TICKS
    R0[i]=$READ
done
sleep "$IDLE"
hz=$(getconf CLK_TCK)
for i in 0 1 2; do
    sample "$i"
    p=${BENCH_PIDS[i]}
    awk -v i="$i" -v t="$((TICKS - T0[i]))" -v hz="$hz" -v r="$((READ - R0[i]))" \
        -v peak="$(awk '/VmHWM/{print $2}' "/proc/$p/status")" \
        -v rss="$(awk '/VmRSS/{print $2}' "/proc/$p/status")" \
        'BEGIN { printf "agent %d: cpu %.2f s, store read %.1f MB, rss peak %.1f MiB, rss %.1f MiB\n",
                 i, t / hz, r / 1e6, peak / 1024, rss / 1024 }'
done
