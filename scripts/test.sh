#!/usr/bin/env bash
# The one test command: formatting, lints, then every test (extra args go to `cargo test`).
# Installs redis-server (Debian package) when missing, since the Redis store tests need a real one.
set -euo pipefail
cd "$(dirname "$0")/.."

# Colors on a terminal, plain text in logs; respect a value the caller already chose.
if [ -t 1 ]; then export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"; else export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"; fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: redis-server is missing; installing it (apt-get install redis-server)" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! { command -v apt-get >/dev/null 2>&1 \
            && { [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; } \
            && $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server; }; then
        if [ "${CI:-}" = "true" ]; then
            echo "test.sh: FAILED to install redis-server, which CI=true requires" >&2
            exit 1
        fi
        echo "test.sh: could not install redis-server; the Redis store tests will be skipped" >&2
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets "$@"
