#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine and runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BUILD=1 bash scripts/setup.sh
# The gst-launch tests load target/debug/libgstclasssr.so, which `cargo test` alone does not link.
cargo build --lib --bins --features train
cargo test --all-targets --features train "$@"
