#!/usr/bin/env bash
# bench/watcher_memory.sh [N]: what an idle change stream costs an agent in memory, over HTTPS
# and over plain HTTP. For each, one fresh agent on the embedded store (HTTPS with a CA and a
# certificate made by `chordctl tls ... create`), 100 services with one instance each, then N
# idle watchers of them (bench/idle_watchers.py, python3's asyncio); prints the agent's
# resident memory before and after, per watcher. Asserts nothing. CHORDCTL=path names the
# binary (default target/release/chordctl, built if missing).
set -euo pipefail
N=${1:-5000}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_binary
bench_needs curl python3
D=$(mktemp -d /tmp/chordctl-watchers.XXXXXX)
AGENT=""
WATCHERS=""
cleanup() {
    [[ -n $WATCHERS ]] && kill "$WATCHERS" 2>/dev/null || true
    [[ -n $AGENT ]] && kill "$AGENT" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
"$BIN" tls ca create --dir "$D" >/dev/null
"$BIN" tls cert create n0 --dir "$D" --ip 127.0.0.1 >/dev/null
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
for mode in https http; do
    flags=()
    curl_tls=()
    if [[ $mode == https ]]; then
        flags=(--tls-cert "$D/n0.pem" --tls-key "$D/n0-key.pem" --tls-ca "$D/ca.pem")
        curl_tls=(--cacert "$D/ca.pem")
    fi
    RUST_LOG=warn "$BIN" agent create --bind 127.0.0.1:0 --http 127.0.0.1:0 \
        --data-dir "$D/data-$mode" "${flags[@]}" >"$D/$mode.log" 2>&1 &
    AGENT=$!
    http=$(bench_http_of "$D/$mode.log")
    for s in $(seq 0 99); do
        curl -sf "${curl_tls[@]}" -X PUT "$mode://$http/v1/services/w$s/instances/a" \
            -H 'content-type: application/json' -d '{"address":"10.0.0.1","port":80}' >/dev/null
    done
    before=$(rss "$AGENT")
    plain=0
    [[ $mode == http ]] && plain=1
    python3 bench/idle_watchers.py "${http%:*}" "${http##*:}" "$D/ca.pem" "$N" "$plain" >"$D/w.out" 2>&1 &
    WATCHERS=$!
    for _ in $(seq 600); do
        grep -q '^open' "$D/w.out" && break
        kill -0 "$WATCHERS" 2>/dev/null || { cat "$D/w.out" >&2; exit 1; }
        sleep 0.2
    done
    after=$(rss "$AGENT")
    echo "$mode: $(head -1 "$D/w.out") watchers; agent RSS $before KiB before, $after KiB after:" \
        "$(awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN{printf "%.1f", (a-b)/n}') KiB per idle watcher"
    kill "$WATCHERS"; wait "$WATCHERS" 2>/dev/null || true; WATCHERS=""
    kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=""
done
