#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine and runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BUILD=1 bash scripts/setup.sh
# The gst-launch tests load target/debug/libgstclasssr.so, which `cargo test` alone does not link.
cargo build --lib --bins --features train
log=$(mktemp)
status=0
cargo test --all-targets --features train "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (some targets, e.g. examples, hold no tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
