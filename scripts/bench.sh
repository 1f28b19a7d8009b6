#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: machine, commands and results of the element benchmarks
# (examples/bench.rs) on vtest.avi and videotestsrc. Not a test: numbers depend on the machine.
#   bash scripts/bench.sh [--frames N] [--reps R] [--model DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BUILD=1 bash scripts/setup.sh >/dev/null
clip=$(bash scripts/fetch-clip.sh)
cargo build --release --example bench 2>/dev/null
args=("$@")
out=$(mktemp)
./target/release/examples/bench "$clip" "${args[@]}" > "$out"
model="embedded default (known-answer: nearest / bilinear / bicubic branches, variance classifier)"
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--model" ] && model="${args[$((i + 1))]}"; done
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bash scripts/bench.sh ${args[*]}\` on $(date -u +%Y-%m-%d)."
  echo
  echo "* machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GB RAM, no GPU"
  echo "* ONNX Runtime 1.31.1 (CPU), GStreamer $(gst-launch-1.0 --version | head -1 | awk '{print $NF}'), release build"
  echo "* model: $model"
  echo "* The machine is shared and noisy: compare the ratios within one run, not absolute fps across runs."
  echo
  cat "$out"
} > BENCHMARKS.md
rm -f "$out"
echo "wrote BENCHMARKS.md"
