#!/usr/bin/env bash
# bench/ring_instructions.sh [COUNT]: CPU instructions per registration in a ring of three
# agents with --replicas 3, counted by callgrind (the ring's counterpart of instructions.sh:
# wrk's writes/s on the ring move by a fifth from run to run, instruction counts by about 1%).
# Three fresh agents on the embedded store, each under valgrind; once the ring has formed,
# counting is switched on in all three, 8 threads of bench/register_count.py register COUNT
# (default 300) new ids each over 32 services through the first agent, and counting is
# switched off. Prints each agent's instructions, those of its checkpointer thread (the redb
# commits, whose share depends on timing under valgrind, so they are left out of the
# comparable figure), the per-registration figure without them, and how many of the 32
# services the first agent owns (it forwards the others' writes: the figure depends on it).
# To compare two builds, give both the same ring: RING_PORTS="R1 R2 R3" fixes the agents' ring
# ports (the node ids, so the owners) and the run's service names are fixed too. Needs
# symbols: CHORDCTL defaults to target/profiling/chordctl (built with `cargo build --profile
# profiling` when missing). Asserts nothing.
set -euo pipefail
COUNT=${1:-300}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_profiling_binary
bench_needs valgrind callgrind_control callgrind_annotate python3 curl jq
bench_workdir ring-instructions
read -r -a PORTS <<<"${RING_PORTS:-0 0 0}"
PREFIX=ringins

# start NAME PORT [join SEED]: one agent under callgrind, counting nothing yet.
start() {
    local name=$1 port=$2
    shift 2
    local how=(create)
    [[ ${1:-} == join ]] && how=(join "$2")
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$D/$name.cg" \
        --instr-atstart=no "$BIN" agent "${how[@]}" --bind "127.0.0.1:$port" \
        --http 127.0.0.1:0 --data-dir "$D/$name" --replicas 3 >"$D/$name.log" 2>&1 &
    BENCH_PIDS+=("$!")
    # valgrind starts an agent some 50 times slower.
    bench_http_of "$D/$name.log" 90 >/dev/null
}

start a "${PORTS[0]}"
SEED=$(sed -n 's/.*ring=\([^ ]*\).*/\1/p' "$D/a.log" | head -1)
start b "${PORTS[1]}" join "$SEED"
start c "${PORTS[2]}" join "$SEED"
HTTP=$(bench_http_of "$D/a.log")
for _ in $(seq 400); do
    [[ $(curl -fsS "http://$HTTP/v1/ring/nodes" | jq length) == 3 ]] && break
    sleep 0.5
done
[[ $(curl -fsS "http://$HTTP/v1/ring/nodes" | jq length) == 3 ]] || { echo "the ring did not form" >&2; exit 1; }
for p in "${BENCH_PIDS[@]}"; do callgrind_control -i on "$p" >/dev/null 2>&1; done
python3 bench/register_count.py "$HTTP" "$COUNT" 8 "$PREFIX"
for p in "${BENCH_PIDS[@]}"; do callgrind_control -i off "$p" >/dev/null 2>&1; done
owned=0
for i in $(seq 0 31); do
    owner=$(curl -fsS "http://$HTTP/v1/locate/$PREFIX-$i" | jq -r .owner.http)
    if [[ $owner == "$HTTP" ]]; then owned=$((owned + 1)); fi
done
for p in "${BENCH_PIDS[@]}"; do kill "$p"; done
wait 2>/dev/null || true
BENCH_PIDS=()
writes=$((COUNT * 8))
sum=0
for name in a b c; do
    total=$(callgrind_annotate "$D/$name.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    checkpoints=$(callgrind_annotate --inclusive=yes "$D/$name.cg" 2>/dev/null |
        awk '/store::embedded::checkpointer/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
    checkpoints=${checkpoints:-0}
    echo "agent $name: $total instructions, $checkpoints of them in checkpoints"
    sum=$((sum + total - checkpoints))
done
echo "the first agent owned $owned of the 32 services"
echo "instructions without checkpoints: $sum for $writes registrations, $((sum / writes)) each"
