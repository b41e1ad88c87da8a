#!/usr/bin/env bash
# The one test command: formatting, lints, then every test (extra args go to `cargo test`).
# Installs redis-server and chromium (Debian packages) when missing: the Redis store tests need a
# real server, the web view's tests a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."

# Colors on a terminal, plain text in logs; respect a value the caller already chose.
if [ -t 1 ]; then export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"; else export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"; fi

# Install Debian package $2 when command $1 is missing. Under CI=true a failed install is a
# failure; elsewhere the tests that need it say SKIPPED.
ensure_package() {
    local program="$1" package="$2" what="$3"
    command -v "$program" >/dev/null 2>&1 && return 0
    echo "test.sh: $program is missing; installing it (apt-get install $package)" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! { command -v apt-get >/dev/null 2>&1 \
            && { [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; } \
            && $sudo apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package"; }; then
        if [ "${CI:-}" = "true" ]; then
            echo "test.sh: FAILED to install $package, which CI=true requires" >&2
            exit 1
        fi
        echo "test.sh: could not install $package; $what will be skipped" >&2
    fi
}

ensure_package redis-server redis-server "the Redis store tests"
# The web view's tests (tests/ui.rs) drive a headless Chromium.
ensure_package chromium chromium "the web view's browser tests"

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets "$@"
