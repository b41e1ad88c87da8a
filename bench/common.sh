# Sourced by the standalone measurement scripts of bench/ (not by run.sh): the binary to run,
# the tools a script needs, and where a started agent serves.

# BIN: $CHORDCTL, or target/release/chordctl (built when missing). Run from the repo's root.
bench_binary() {
    BIN=${CHORDCTL:-target/release/chordctl}
    [[ -x $BIN ]] || cargo build --release
}

# BIN for the callgrind counts, which need symbols: $CHORDCTL, or target/profiling/chordctl
# (the release build's code with debug info, built when missing).
bench_profiling_binary() {
    BIN=${CHORDCTL:-target/profiling/chordctl}
    [[ -x $BIN ]] || cargo build --profile profiling
}

# Exit with a message naming the first of the given programs that is not installed.
bench_needs() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
    done
}

# The HTTP address an agent started with its output in LOG announces (waits up to SECS, default
# 10 s); prints the log and exits when it announces none.
bench_http_of() {
    local log=$1 http=""
    for _ in $(seq $((${2:-10} * 10))); do
        http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$log" | head -1)
        [[ -n $http ]] && { echo "$http"; return; }
        sleep 0.1
    done
    cat "$log" >&2
    exit 1
}

# Run wrk with these arguments (a script of bench/ that prints WRKRESULT), print that line, and
# exit when wrk gave none or any request failed.
bench_wrk() {
    local out
    out=$(wrk "$@" | grep WRKRESULT) || { echo "wrk gave no result" >&2; exit 1; }
    echo "$out"
    [[ $out == *" errors=0 "* ]] || { echo "requests failed: $out" >&2; exit 1; }
}

# bench_workdir NAME: a fresh directory /tmp/chordctl-NAME.* in D; at exit the processes whose
# pids are in BENCH_PIDS are stopped and D is removed. (A script that stops one of them itself
# takes its pid out of BENCH_PIDS, so that a pid reused meanwhile is never signalled.)
bench_workdir() {
    D=$(mktemp -d "/tmp/chordctl-$1.XXXXXX")
    BENCH_PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$D"
}
