#!/usr/bin/env bash
# chordctl beside etcd and Redis on this machine, in one run (issue 6; bench/README.md).
#
#   bench/run.sh                      # everything, 10 s per load, 32 connections
#   DURATION=5 CONNS=16 bench/run.sh  # shorter
#   SKIP_RINGS=1 bench/run.sh         # no 8- and 32-agent rings
#   ONLY_SHAPES=1 bench/run.sh        # only the shapes users deploy (big services, 3 agents
#                                     # with --replicas 3 beside a 3-member etcd cluster)
#   ONLY_SHAPES=1 SKIP_SHAPES=1 SKIP_RING3=0 bench/run.sh   # only the ring of three (also
#                                     # SKIP_BIGSMALL, SKIP_HEARTBEATS, SKIP_GROW)
#   CHORDCTL=path/to/chordctl bench/run.sh   # an already built binary (no cargo build)
#   ONLY_WATCH=1 bench/run.sh          # only the watch benchmark: WATCHERS (10,000) watchers
#                                     # on one agent over WATCH_SERVICES (100) services under
#                                     # WATCH_RATE (1,000) writes/s; write-to-notify p50/p99,
#                                     # the agent's RSS per idle watcher and CPU (examples/watch_bench.rs);
#                                     # WATCH_TLS=1 over HTTPS
#   ONLY_TLS=1 bench/run.sh            # only the TLS benchmark: a ring of 5 without and with TLS,
#                                     # ring lookup p50/p99 and registrations/s through a
#                                     # non-owner agent, connections warm (examples/tls_bench.rs)
#   ONLY_DNS=1 bench/run.sh            # only the DNS benchmark: one agent, UDP A queries with
#                                     # many in flight; queries/s and p50/p99 (examples/dns_bench.rs)
#
# It installs what is missing (Debian packages etcd-server, wrk, redis-server, redis-tools,
# curl, jq), builds chordctl in release mode, and starts everything on loopback in a temporary
# directory: one chordctl agent on the embedded store, one etcd, one redis-server with AOF,
# later rings of 8 and 32 agents. Every process it started is stopped by pid on exit.
# It prints tables; it asserts nothing. Figures are only comparable within one run.

set -euo pipefail

DURATION=${DURATION:-10}       # seconds per wrk run
WARMUP=${WARMUP:-3}            # seconds of the same load before each measured wrk run
CONNS=${CONNS:-32}             # connections (concurrency) for wrk and redis-benchmark
THREADS=${THREADS:-2}          # wrk threads
ROUNDS=${ROUNDS:-3}            # paired runs of each chordctl-vs-etcd goal row of the shapes
LOOKUPS=${LOOKUPS:-2000}       # locate calls for the mean hop count at N=32
SKIP_RINGS=${SKIP_RINGS:-0}
SKIP_SHAPES=${SKIP_SHAPES:-0}  # the shapes users deploy (issue 12): big services, rings of 3
ONLY_SHAPES=${ONLY_SHAPES:-0}  # only those
# Each shape on its own (1 skips it; each defaults to SKIP_SHAPES, so SKIP_SHAPES=1 SKIP_RING3=0
# runs only the ring of three):
SKIP_BIGSMALL=${SKIP_BIGSMALL:-$SKIP_SHAPES}      # one client, big service vs small
SKIP_HEARTBEATS=${SKIP_HEARTBEATS:-$SKIP_SHAPES}  # status reports into the big service
SKIP_GROW=${SKIP_GROW:-$SKIP_SHAPES}              # new ids into 32 growing services vs etcd
SKIP_RING3=${SKIP_RING3:-$SKIP_SHAPES}            # 3 agents --replicas 3 vs a 3-member etcd
RING3_REPLICAS=${RING3_REPLICAS:-3}  # the ring of three's --replicas: 1 measures its ceiling,
                                     # forwarding and the owner's write with no copies at all
ONLY_WATCH=${ONLY_WATCH:-0}    # only the watch benchmark (issue 14)
ONLY_TLS=${ONLY_TLS:-0}        # only the TLS benchmark (issue 15)
ONLY_DNS=${ONLY_DNS:-0}        # only the DNS benchmark (issue 17)
SKIP_WATCH=${SKIP_WATCH:-$ONLY_SHAPES}
WATCHERS=${WATCHERS:-10000}    # watchers on one agent, spread over WATCH_SERVICES services,
WATCH_SERVICES=${WATCH_SERVICES:-100}  # under WATCH_RATE registrations/s for DURATION s
WATCH_RATE=${WATCH_RATE:-1000}
WATCH_TLS=${WATCH_TLS:-0}      # 1: the watch benchmark over HTTPS (a CA and certificate made here)
HEARTBEAT_GOAL=10000                              # status reports/s the heartbeat row aims at
BIG=${BIG:-9998}               # instances in the big service. A service holds at most 10,000
                               # and the 1-client churn row may leave one new id behind when
                               # its warm-up stops between a register and its deregister, then
                               # holds one more while it runs: 9,998 + 1 + 1 stays within.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BENCH_DIR="$ROOT/bench"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chordctl-bench.XXXXXX")
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait, then SIGKILL what is left.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# stop_pid PID [SIGNAL]: stops one process this script started, waits for it and drops it from
# PIDS (once reaped its pid may be reused by someone else's process, which cleanup must not hit).
stop_pid() {
    local pid=$1 sig=${2:-TERM} p keep=()
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# ---- what is needed ------------------------------------------------------------------------

need_packages() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-benchmark >/dev/null || missing+=(redis-tools)
    command -v curl >/dev/null || missing+=(curl)
    command -v jq >/dev/null || missing+=(jq)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        local sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build_chordctl() {
    if [[ -n ${CHORDCTL:-} ]]; then
        [[ -x $CHORDCTL ]] || die "CHORDCTL=$CHORDCTL is not an executable"
        return
    fi
    say "building chordctl (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin chordctl)
    CHORDCTL="${CARGO_TARGET_DIR:-$ROOT/target}/release/chordctl"
}

# A free loopback TCP port (the kernel picks it; a race with other programs is unlikely).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---- processes -----------------------------------------------------------------------------

# start_agent NAME [join SEED]: starts an agent on port 0 (with the flags in AGENT_FLAGS);
# sets AGENT_HTTP, AGENT_RING, AGENT_PID.
AGENT_FLAGS=()
start_agent() {
    local name=$1; shift
    local out="$WORK/$name.out"
    local how=(create)
    [[ ${1:-} == join ]] && how=(join "$2")
    RUST_LOG=warn "$CHORDCTL" agent "${how[@]}" --bind 127.0.0.1:0 --http 127.0.0.1:0 \
        --data-dir "$WORK/$name" "${AGENT_FLAGS[@]}" >"$out" 2>"$WORK/$name.err" &
    AGENT_PID=$!
    PIDS+=("$AGENT_PID")
    for _ in $(seq 300); do
        if grep -q 'serving:' "$out" 2>/dev/null; then
            AGENT_HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$out" | head -1)
            AGENT_RING=$(sed -n 's/.*ring=\([^ ]*\).*/\1/p' "$out" | head -1)
            return
        fi
        kill -0 "$AGENT_PID" 2>/dev/null || die "agent $name exited: $(cat "$WORK/$name.err")"
        sleep 0.1
    done
    die "agent $name printed no address within 30 s"
}

start_etcd() {
    local client peer
    client=$(free_port); peer=$(free_port)
    etcd --name bench --data-dir "$WORK/etcd" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" --log-level error \
        >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
    ETCD="127.0.0.1:$client"
    for _ in $(seq 100); do
        curl -fsS "http://$ETCD/health" >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "etcd did not become healthy: $(tail -5 "$WORK/etcd.log")"
}

# start_etcd_cluster N: N etcd members on loopback, one cluster; sets ETCDS (client addresses).
start_etcd_cluster() {
    local n=$1 i initial="" clients=() peers=()
    for i in $(seq 0 $((n - 1))); do
        clients+=("$(free_port)"); peers+=("$(free_port)")
        initial+="${initial:+,}m$i=http://127.0.0.1:${peers[$i]}"
    done
    ETCDS=()
    for i in $(seq 0 $((n - 1))); do
        etcd --name "m$i" --data-dir "$WORK/etcd-m$i" \
            --listen-client-urls "http://127.0.0.1:${clients[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${clients[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${peers[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
            --initial-cluster "$initial" --initial-cluster-state new --log-level error \
            >"$WORK/etcd-m$i.log" 2>&1 &
        PIDS+=($!)
        ETCDS+=("127.0.0.1:${clients[$i]}")
    done
    for _ in $(seq 200); do
        curl -fsS "http://${ETCDS[0]}/health" 2>/dev/null | grep -q '"true"' && return
        sleep 0.2
    done
    die "the etcd cluster did not become healthy: $(tail -5 "$WORK/etcd-m0.log")"
}

start_redis() {
    REDIS_PORT=$(free_port)
    mkdir -p "$WORK/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
        --appendonly yes --appendfsync everysec --daemonize no --logfile "$WORK/redis.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "redis-server did not start: $(tail -5 "$WORK/redis.log")"
}

# ---- measuring -----------------------------------------------------------------------------

# wrk_run SCRIPT URL [CONNS]: prints "rps p50 p99 errors". Every system gets the same
# WARMUP seconds of the same load first, not measured (caches filled, files grown).
wrk_run() {
    local script=$1 url=$2 conns=${3:-$CONNS}
    local out threads=$THREADS
    ((conns < threads)) && threads=$conns
    if ((WARMUP > 0)); then
        wrk -t"$threads" -c"$conns" -d"${WARMUP}s" --timeout 10s -s "$BENCH_DIR/$script" "$url" \
            >/dev/null 2>&1 || die "wrk warm-up against $url failed"
    fi
    out=$(wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 10s -s "$BENCH_DIR/$script" "$url" 2>&1) ||
        die "wrk failed: $out"
    local line
    line=$(grep '^WRKRESULT' <<<"$out") || die "wrk printed no result: $out"
    sed -E 's/WRKRESULT rps=([^ ]*) p50=([^ ]*) p99=([^ ]*) errors=([^ ]*).*/\1 \2 \3 \4/' <<<"$line"
}

# redis_run TEST: "rps p50 p99 0" from redis-benchmark's CSV.
redis_run() {
    local test=$1 n=$((DURATION * 20000))
    redis-benchmark -p "$REDIS_PORT" -c "$CONNS" -n "$n" -t "$test" -d 100 -r 1000 --csv 2>/dev/null |
        awk -F'"' 'NR==2 {printf "%s %s %s 0\n", $4, $10, $14}'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A R   # results: R[name]="rps p50 p99 errors"
declare -A ROUND_RATIOS   # ROUND_RATIOS[name]: every paired round's ratio, in run order

# paired KEY CMP "SCRIPT URL" "SCRIPT URL": ROUNDS runs of each side, alternating which goes
# first (so a host that slows down or speeds up during the rounds favours neither), each
# round's ops/s ratio in ROUND_RATIOS[KEY] (with the non-2xx and socket errors of both sides
# when there were any), and in R[KEY] and R[CMP] the round whose ratio is the median. One pair
# of runs on a small shared host moves by a fifth from run to run. With SVC_PREFIX set, round
# i writes to SVC_PREFIX-ri, so every round starts from new services (a service holds at most
# 10,000 instances; full ones would refuse the later rounds' registrations); PAIRED_PREFIX
# is the median round's.
paired() {
    local key=$1 cmp=$2 a=$3 b=$4 i ra rb r rounds=() ratios=() base=${SVC_PREFIX:-}
    for ((i = 1; i <= ROUNDS; i++)); do
        [[ -n $base ]] && export SVC_PREFIX="$base-r$i"
        # shellcheck disable=SC2086 # "SCRIPT URL" splits into wrk_run's two arguments
        if ((i % 2)); then
            ra=$(wrk_run $a) rb=$(wrk_run $b)
        else
            rb=$(wrk_run $b) ra=$(wrk_run $a)
        fi
        r=$(ratio "${ra%% *}" "${rb%% *}")
        rounds+=("$r|$ra|$rb|${SVC_PREFIX:-}")
        read -r _ _ _ ea <<<"$ra"
        read -r _ _ _ eb <<<"$rb"
        ((ea + eb == 0)) || r="$r(errors $ea/$eb)"
        ratios+=("$r")
    done
    ROUND_RATIOS[$key]=${ratios[*]}
    local median
    median=$(printf '%s\n' "${rounds[@]}" | sort -t'|' -k1,1g | sed -n "$(((ROUNDS + 1) / 2))p")
    IFS='|' read -r _ ra rb PAIRED_PREFIX <<<"$median"
    R[$key]=$ra
    R[$cmp]=$rb
}

# row LABEL KEY [COMPARE_KEY [inverse]]: RATIO is KEY's ops/s over COMPARE_KEY's, or with
# "inverse" COMPARE_KEY's over KEY's (at one connection: KEY's time per request over the other's).
# The label is padded by characters, not bytes, so labels may hold "≤", "≥" and "×".
row() {
    local label=$1 key=$2 cmp=${3:-} how=${4:-}
    read -r rps p50 p99 err <<<"${R[$key]}"
    local r="-"
    if [[ -n $cmp ]]; then
        read -r crps _ <<<"${R[$cmp]}"
        if [[ $how == inverse ]]; then r=$(ratio "$crps" "$rps"); else r=$(ratio "$rps" "$crps"); fi
    fi
    local pad=$((${LABEL_W:-44} - ${#label}))
    ((pad > 0)) || pad=0
    printf "%s%*s %10.0f %9.2f %9.2f %7s %9s\n" "$label" "$pad" "" "$rps" "$p50" "$p99" "$err" "$r"
}

# ---- the run -------------------------------------------------------------------------------

# The TLS benchmark: in-process agents and load (examples/tls_bench.rs); needs no package.
if [[ $ONLY_TLS == 1 ]]; then
    say "TLS: a ring of 5 without and with TLS, ${DURATION}s of registrations, $CONNS at once"
    (cd "$ROOT" && cargo build --release --quiet --example tls_bench)
    SECS="$DURATION" CONNS="$CONNS" "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/tls_bench"
    exit 0
fi

if [[ $ONLY_DNS == 1 ]]; then
    say "DNS: one agent, ${DURATION}s of UDP A queries, many in flight"
    (cd "$ROOT" && cargo build --release --quiet --example dns_bench)
    SECS="$DURATION" "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/dns_bench"
    exit 0
fi

need_packages
build_chordctl
say "work directory $WORK; $(nproc) cores; load generators share them with the servers"

# The watch benchmark: its own agent, its own load generator (examples/watch_bench.rs).
watch_bench() {
    say "watch: $WATCHERS watchers on one agent over $WATCH_SERVICES services, $WATCH_RATE writes/s for ${DURATION}s"
    (cd "$ROOT" && cargo build --release --quiet --example watch_bench)
    local bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/watch_bench"
    local scheme=http
    if [[ $WATCH_TLS == 1 ]]; then
        # The agent serves HTTPS with a certificate of a CA made here; the watchers trust it.
        "$CHORDCTL" tls ca create --dir "$WORK/watch-tls" >/dev/null
        "$CHORDCTL" tls cert create w0 --dir "$WORK/watch-tls" --ip 127.0.0.1 >/dev/null
        AGENT_FLAGS=(--tls-cert "$WORK/watch-tls/w0.pem" --tls-key "$WORK/watch-tls/w0-key.pem"
            --tls-ca "$WORK/watch-tls/ca.pem")
        scheme=https
    fi
    start_agent w0
    AGENT_FLAGS=()
    WATCH_BENCH_CA="$WORK/watch-tls/ca.pem" "$bin" "$scheme://$AGENT_HTTP" "$WATCHERS" \
        "$WATCH_SERVICES" "$WATCH_RATE" "$DURATION" "$AGENT_PID"
    stop_pid "$AGENT_PID"
}
if [[ $ONLY_WATCH == 1 ]]; then
    watch_bench
    exit 0
fi

if [[ $ONLY_SHAPES != 1 ]]; then
say "single agent (embedded store), etcd, redis"
start_agent a0
SINGLE_HTTP=$AGENT_HTTP SINGLE_PID=$AGENT_PID
start_etcd
start_redis
sleep 2
IDLE_RSS_FRESH=$(rss_mib "$SINGLE_PID")

# The 10-instance service to discover, in both systems.
for i in $(seq 0 9); do
    body=$(printf '{"address":"10.99.0.%d","port":%d,"tags":["bench"],"metadata":{"origin":"wrk"}}' $((i + 1)) $((8000 + i)))
    curl -fsS -X PUT -H 'Content-Type: application/json' -d "$body" \
        "http://$SINGLE_HTTP/v1/services/bench-disc/instances/i$i" >/dev/null
    key=$(printf '/services/bench-disc/i%d' "$i" | base64 -w0)
    val=$(printf '%s' "$body" | base64 -w0)
    curl -fsS -X POST -d "{\"key\":\"$key\",\"value\":\"$val\"}" "http://$ETCD/v3/kv/put" >/dev/null
done
n=$(curl -fsS "http://$SINGLE_HTTP/v1/services/bench-disc" | jq '.instances | length')
[[ $n == 10 ]] || die "bench-disc has $n instances, expected 10"
n=$(curl -fsS -X POST -d "{\"key\":\"$(printf /services/bench-disc/ | base64 -w0)\",\"range_end\":\"$(printf /services/bench-disc0 | base64 -w0)\"}" "http://$ETCD/v3/kv/range" | jq -r '.count')
[[ $n == 10 ]] || die "etcd range has $n keys, expected 10"

say "register: chordctl PUT vs etcd put (${DURATION}s each, $CONNS connections)"
R[c_reg]=$(wrk_run chordctl_register.lua "http://$SINGLE_HTTP")
R[e_put]=$(wrk_run etcd_put.lua "http://$ETCD")
say "discover: chordctl GET vs etcd range"
R[c_disc]=$(wrk_run chordctl_discover.lua "http://$SINGLE_HTTP")
R[e_range]=$(wrk_run etcd_range.lua "http://$ETCD")
say "redis-benchmark SET/GET"
R[r_set]=$(redis_run set)
R[r_get]=$(redis_run get)
sleep 3
IDLE_RSS_AFTER=$(rss_mib "$SINGLE_PID")
c0=$(cpu_ticks "$SINGLE_PID"); sleep 10; c1=$(cpu_ticks "$SINGLE_PID")
IDLE_CPU=$(awk -v t=$((c1 - c0)) 'BEGIN { printf "%.2f", t / 100 / 10 * 100 }')

if [[ $SKIP_RINGS != 1 ]]; then
    say "8 agents: discover through the owner vs through a non-owner"
    start_agent r8-0
    seed=$AGENT_RING
    R8_HTTP=("$AGENT_HTTP")
    for i in $(seq 1 7); do
        start_agent "r8-$i" join "$seed"
        R8_HTTP+=("$AGENT_HTTP")
    done
    # Wait for every agent to see all 8, then for fingers to settle.
    for _ in $(seq 100); do
        ok=1
        for h in "${R8_HTTP[@]}"; do
            [[ $(curl -fsS "http://$h/v1/ring/nodes" | jq length) == 8 ]] || ok=0
        done
        ((ok)) && break
        sleep 0.5
    done
    sleep 5
    for i in $(seq 0 9); do
        curl -fsS -X PUT -H 'Content-Type: application/json' \
            -d "{\"address\":\"10.99.0.$((i + 1))\",\"port\":$((8000 + i)),\"tags\":[\"bench\"]}" \
            "http://${R8_HTTP[0]}/v1/services/bench-disc/instances/i$i" >/dev/null
    done
    owner=$(curl -fsS "http://${R8_HTTP[0]}/v1/locate/bench-disc" | jq -r '.owner.http')
    other=""
    for h in "${R8_HTTP[@]}"; do [[ $h != "$owner" ]] && other=$h && break; done
    R[o_disc]=$(wrk_run chordctl_discover.lua "http://$owner")
    R[n_disc]=$(wrk_run chordctl_discover.lua "http://$other")

    say "32 agents: lookup hops, locate latency, memory"
    start_agent r32-0
    seed=$AGENT_RING
    R32_HTTP=("$AGENT_HTTP") R32_PID=("$AGENT_PID")
    for i in $(seq 1 31); do
        start_agent "r32-$i" join "$seed"
        R32_HTTP+=("$AGENT_HTTP") R32_PID+=("$AGENT_PID")
    done
    for _ in $(seq 200); do
        [[ $(curl -fsS "http://${R32_HTTP[0]}/v1/ring/nodes" | jq length) == 32 ]] && break
        sleep 0.5
    done
    sleep 15   # fingers: one fix every 250 ms per agent
    hops=$(for i in $(seq 1 "$LOOKUPS"); do
        h=${R32_HTTP[$((RANDOM % 32))]}
        curl -fsS "http://$h/v1/locate/key-$i-$RANDOM" | jq -r .hops
    done | awk '{ s += $1; n++ } END { printf "%.2f", s / n }')
    HOPS_MAX=$(awk 'BEGIN { printf "%.2f", 0.5 * log(32) / log(2) + 0.5 }')
    R[locate]=$(wrk_run chordctl_locate.lua "http://${R32_HTTP[0]}")
    sleep 5
    rss_all=$(for p in "${R32_PID[@]}"; do rss_mib "$p"; echo; done)
    RSS32_MEAN=$(awk '{ s += $1; n++ } END { printf "%.1f", s / n }' <<<"$rss_all")
    RSS32_MAX=$(sort -n <<<"$rss_all" | tail -1)
fi
fi

# ---- the shapes users deploy ---------------------------------------------------------------

# fill_service HTTP SERVICE N: registers f-1 .. f-N into SERVICE; a handful by curl, many with
# one wrk run of FILL_CONNS connections that sends each id once (chordctl_fill.lua), stopped as
# soon as the catalog counts N. A pass that stops growing for 30 s (some registers failed) is
# stopped and the fill sent again (ids already there are replaced); after 3 passes it gives up.
FILL_CONNS=${FILL_CONNS:-64}
fill_service() {
    local http=$1 service=$2 n=$3 have=0 i pass last stalled pid
    if ((n <= 50)); then
        for i in $(seq 1 "$n"); do
            curl -fsS -X PUT -H 'Content-Type: application/json' \
                -d '{"address":"10.99.0.1","port":8000,"tags":["bench"]}' \
                "http://$http/v1/services/$service/instances/f-$i" >/dev/null
        done
        return
    fi
    local t0=$SECONDS
    for pass in 1 2 3; do
        SERVICE=$service LIMIT=$n THREADS=$THREADS \
            wrk -t"$THREADS" -c"$FILL_CONNS" -d3600s --timeout 10s -s "$BENCH_DIR/chordctl_fill.lua" \
            "http://$http" >"$WORK/fill-$service.out" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        last=-1 stalled=0
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.5
            have=$(catalog_count "$http" "$service")
            ((have >= n)) && break
            if ((have > last)); then last=$have stalled=0; else stalled=$((stalled + 1)); fi
            ((stalled < 60)) || break
        done
        stop_pid "$pid" INT
        have=$(catalog_count "$http" "$service")
        if ((have >= n)); then
            say "filled $service with $have instances in $((SECONDS - t0)) s"
            return
        fi
        say "filling $service: $have of $n after pass $pass ($(grep -E 'Non-2xx|Socket errors' "$WORK/fill-$service.out" | tr '\n' ' '))"
    done
    die "$service has only $have of $n instances"
}

# catalog_count HTTP SERVICE: the instance count the catalog (GET /v1/services) gives SERVICE.
catalog_count() {
    curl -fsS "http://$1/v1/services" | jq --arg s "$2" '[.[] | select(.service == $s) | .instances] | add // 0'
}

# size HTTP SERVICE: its instance count.
size() { curl -fsS "http://$1/v1/services/$2" | jq '.instances | length'; }

# ring_of HTTP N: wait until the agent at HTTP sees N nodes.
ring_of() {
    for _ in $(seq 200); do
        [[ $(curl -fsS "http://$1/v1/ring/nodes" | jq length) == "$2" ]] && return
        sleep 0.5
    done
    die "the ring did not reach $2 nodes"
}

ONE_AGENT_SHAPES=0
[[ $SKIP_BIGSMALL != 1 || $SKIP_HEARTBEATS != 1 || $SKIP_GROW != 1 ]] && ONE_AGENT_SHAPES=1
if ((ONE_AGENT_SHAPES)); then
    say "shapes: one fresh agent"
    start_agent s0
    S_HTTP=$AGENT_HTTP S_PID=$AGENT_PID
    if [[ $SKIP_BIGSMALL != 1 || $SKIP_HEARTBEATS != 1 ]]; then
        fill_service "$S_HTTP" shape-big "$BIG"
        BIG_SIZE=$(catalog_count "$S_HTTP" shape-big)
    fi
    if [[ $SKIP_BIGSMALL != 1 ]]; then
        fill_service "$S_HTTP" shape-small 10
        say "one client: a new instance registered and deregistered, a status report ($BIG_SIZE vs 10)"
        R[big_churn]=$(export SERVICE=shape-big; wrk_run chordctl_churn.lua "http://$S_HTTP" 1)
        R[small_churn]=$(export SERVICE=shape-small; wrk_run chordctl_churn.lua "http://$S_HTTP" 1)
        R[big_rep1]=$(export SERVICE=shape-big COUNT=$BIG; wrk_run chordctl_report.lua "http://$S_HTTP" 1)
        R[small_rep1]=$(export SERVICE=shape-small COUNT=10; wrk_run chordctl_report.lua "http://$S_HTTP" 1)
        BIG_AFTER=$(catalog_count "$S_HTTP" shape-big) SMALL_AFTER=$(catalog_count "$S_HTTP" shape-small)
    fi
    if [[ $SKIP_HEARTBEATS != 1 ]]; then
        say "heartbeats: status reports into the $BIG_SIZE-instance service, $CONNS connections"
        R[big_rep]=$(export SERVICE=shape-big COUNT=$BIG; wrk_run chordctl_report.lua "http://$S_HTTP")
        R[hb_goal]="$HEARTBEAT_GOAL 0 0 0"
    fi
    if [[ $SKIP_GROW != 1 ]]; then
        [[ -n ${ETCD:-} ]] || start_etcd
        say "new ids into 32 growing services, $CONNS connections, vs etcd put of new keys"
        SVC_PREFIX=grow SERVICES=32 paired grow e_grow \
            "chordctl_register_new.lua http://$S_HTTP" "etcd_put_new.lua http://$ETCD"
        GROWN=$(curl -fsS "http://$S_HTTP/v1/services" |
            jq --arg p "$PAIRED_PREFIX-" '[.[] | select(.service | startswith($p)) | .instances] | add // 0')
    fi
    stop_pid "$S_PID"
fi

if [[ $SKIP_RING3 != 1 ]]; then
    say "three agents with --replicas $RING3_REPLICAS beside a three-member etcd cluster"
    AGENT_FLAGS=(--replicas "$RING3_REPLICAS")
    start_agent k0
    K_HTTP=("$AGENT_HTTP")
    seed=$AGENT_RING
    for i in 1 2; do
        start_agent "k$i" join "$seed"
        K_HTTP+=("$AGENT_HTTP")
    done
    AGENT_FLAGS=()
    for h in "${K_HTTP[@]}"; do ring_of "$h" 3; done
    start_etcd_cluster 3
    fill_service "${K_HTTP[0]}" bench-disc 10
    for i in $(seq 1 10); do
        key=$(printf '/services/bench-disc/f-%d' "$i" | base64 -w0)
        val=$(printf '{"address":"10.99.0.1","port":8000,"tags":["bench"]}' | base64 -w0)
        curl -fsS -X POST -d "{\"key\":\"$key\",\"value\":\"$val\"}" "http://${ETCDS[0]}/v3/kv/put" >/dev/null
    done
    for i in 0 1 2; do
        n=$(curl -fsS "http://${K_HTTP[$i]}/v1/services/bench-disc" | jq '.instances | length')
        [[ $n == 10 ]] || die "bench-disc through agent $((i + 1)) has $n instances, expected 10"
    done
    say "the same growing load sent to the first node of each, then discover through each agent"
    SVC_PREFIX=kgrow SERVICES=32 paired k_grow ke_grow \
        "chordctl_register_new.lua http://${K_HTTP[0]}" "etcd_put_new.lua http://${ETCDS[0]}"
    K_PREFIX=$PAIRED_PREFIX
    # Which node owns a service depends on the ring's random ports: how many of the 32 the
    # agent asked owns itself changes the figure from run to run, so the report says it.
    K_OWNED=0
    for i in $(seq 0 31); do
        owner=$(curl -fsS "http://${K_HTTP[0]}/v1/locate/$K_PREFIX-$i" | jq -r .owner.http)
        [[ $owner == "${K_HTTP[0]}" ]] && K_OWNED=$((K_OWNED + 1))
    done
    # One client: a write's latency through the ring (route, owner's sync and a replica's
    # round trip and sync) against etcd's (leader's append and a follower's), no queueing.
    R[k_one]=$(export SVC_PREFIX=kone SERVICES=32; wrk_run chordctl_register_new.lua "http://${K_HTTP[0]}" 1)
    R[ke_one]=$(export SVC_PREFIX=kone SERVICES=32; wrk_run etcd_put_new.lua "http://${ETCDS[0]}" 1)
    for i in 0 1 2; do
        R[k_disc$i]=$(wrk_run chordctl_discover.lua "http://${K_HTTP[$i]}")
    done
    R[ke_range]=$(wrk_run etcd_range.lua "http://${ETCDS[0]}")
fi

# ---- the report ----------------------------------------------------------------------------

if [[ $ONLY_SHAPES != 1 ]]; then
    printf '\nchordctl vs etcd %s vs redis %s, %ss per run, %s connections, wrk %s threads, %s cores (shared)\n\n' \
        "$(etcd --version | awk 'NR==1 {print $3}')" "$(redis-server --version | sed -E 's/.*v=([^ ]*).*/\1/')" \
        "$DURATION" "$CONNS" "$THREADS" "$(nproc)"
    printf '%-44s %10s %9s %9s %7s %9s\n' WORKLOAD OPS/S P50_MS P99_MS ERRORS RATIO
    row "register   chordctl PUT (WAL+redb, fsync)" c_reg e_put
    row "           etcd /v3/kv/put"             e_put
    row "discover   chordctl GET 10 instances"    c_disc e_range
    row "           etcd /v3/kv/range 10 keys"   e_range
    row "ceiling    redis SET (AOF everysec)"     r_set
    row "           redis GET"                    r_get
    if [[ $SKIP_RINGS != 1 ]]; then
        row "8 agents   discover via the owner"       o_disc
        row "           discover via a non-owner"     n_disc o_disc
        row "32 agents  locate (random keys)"         locate
    fi
    printf '\nRATIO: chordctl/etcd on the same workload; non-owner/owner for the 8-agent rows.\n'
    printf '\nsingle agent RSS: %s MiB idle after start, %s MiB idle after the load; idle CPU %s%% of a core\n' \
        "$IDLE_RSS_FRESH" "$IDLE_RSS_AFTER" "$IDLE_CPU"
    if [[ $SKIP_RINGS != 1 ]]; then
        printf '32 agents: mean lookup hops %s over %s lookups (target <= %s); RSS per agent mean %s MiB, max %s MiB\n' \
            "$hops" "$LOOKUPS" "$HOPS_MAX" "$RSS32_MEAN" "$RSS32_MAX"
    fi
fi

if ((ONE_AGENT_SHAPES)) || [[ $SKIP_RING3 != 1 ]]; then
    printf '\nthe shapes users deploy: %ss per run, %s connections unless said, etcd %s\n\n' \
        "$DURATION" "$CONNS" "$(etcd --version | awk 'NR==1 {print $3}')"
    LABEL_W=58
    printf '%-58s %10s %9s %9s %7s %9s\n' WORKLOAD OPS/S P50_MS P99_MS ERRORS RATIO
    if [[ $SKIP_BIGSMALL != 1 ]]; then
        row "1 client   new id in+out, $BIG_SIZE instances (goal ≤ 1.5×)" big_churn small_churn inverse
        row "           new id in+out, 10 instances"                      small_churn
        row "1 client   status report, $BIG_SIZE instances (goal ≤ 1.5×)" big_rep1 small_rep1 inverse
        row "           status report, 10 instances"                      small_rep1
    fi
    if [[ $SKIP_HEARTBEATS != 1 ]]; then
        row "heartbeats status reports into $BIG_SIZE (goal ≥ 10,000/s)"  big_rep hb_goal
    fi
    if [[ $SKIP_GROW != 1 ]]; then
        row "1 agent    new ids into 32 growing services (goal ≥ 3×)"    grow e_grow
        row "           etcd put of new keys, 32 prefixes"               e_grow
    fi
    if [[ $SKIP_RING3 != 1 ]]; then
        K_GOAL=" (goal ≥ 3×)"
        [[ $RING3_REPLICAS == 3 ]] || K_GOAL=" (no goal)  "
        row "3 agents   K=$RING3_REPLICAS, new ids, sent to the first$K_GOAL"     k_grow ke_grow
        row "           3-member etcd put, sent to the first"            ke_grow
        row "3 agents   K=$RING3_REPLICAS, new ids, one client, sent to the first"      k_one ke_one
        row "           3-member etcd put, one client"                    ke_one
        row "           discover via agent 1 (goal ≥ 2×)"                k_disc0 ke_range
        row "           discover via agent 2 (goal ≥ 2×)"                k_disc1 ke_range
        row "           discover via agent 3 (goal ≥ 2×)"                k_disc2 ke_range
        row "           3-member etcd range 10 keys, first member"       ke_range
    fi
    printf '\nRATIO:\n'
    if [[ $SKIP_BIGSMALL != 1 ]]; then
        printf "  1 client: the big service's time per request over the small one's (small/big ops/s at\n"
        printf '  one connection); new id in+out: a new id registered, then deregistered. Sizes after\n'
        printf '  these rows: big %s, small %s instances.\n' "$BIG_AFTER" "$SMALL_AFTER"
    fi
    if [[ $SKIP_HEARTBEATS != 1 ]]; then
        printf '  heartbeats: reports/s over the goal of %s/s.\n' "$HEARTBEAT_GOAL"
    fi
    if [[ $SKIP_GROW != 1 || $SKIP_RING3 != 1 ]]; then
        printf '  1 agent, 3 agents: chordctl/etcd ops/s; of %s paired rounds, the one whose ratio is the\n' "$ROUNDS"
        printf '  median (every round:'
        [[ $SKIP_GROW != 1 ]] && printf ' 1 agent %s;' "${ROUND_RATIOS[grow]}"
        [[ $SKIP_RING3 != 1 ]] && printf ' 3 agents %s;' "${ROUND_RATIOS[k_grow]}"
        printf ').'
        [[ $SKIP_GROW != 1 ]] && printf ' The 32 growing services of that round reached %s instances.' "$GROWN"
        [[ $SKIP_RING3 != 1 ]] && printf ' The agent asked in the ring of three owned %s of that round'"'"'s 32 services.' "$K_OWNED"
        printf '\n'
    fi
fi

if [[ $SKIP_WATCH != 1 ]]; then
    watch_bench
fi
