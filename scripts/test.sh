#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine and runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BUILD=1 bash scripts/setup.sh
cargo test --all-targets --features train "$@"
