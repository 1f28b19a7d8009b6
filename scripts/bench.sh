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
# The bias knob on real photographs (the held-out wallpapers), through `classsr eval`.
bash scripts/fetch-training-data.sh >/dev/null
cargo build --release --bin classsr 2>/dev/null
model_arg=()
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--model" ] && model_arg=(--model "${args[$((i + 1))]}"); done
{
  echo
  echo "## The bias knob on real photographs"
  echo
  echo "\`classsr eval --hr data/val --modes classsr --bias B\` ($(ls data/val | wc -l) held-out photographs, x4 from antialiased bicubic LR, RGB PSNR with 4-pixel border shaved); original = $(./target/release/classsr eval --hr data/val --modes original "${model_arg[@]}" --json | python3 -c 'import json,sys; print("%.3f dB" % json.load(sys.stdin)["results"][0]["psnr"])')."
  echo
  echo "| bias | tiles class1/2/3 | MACs % of original | PSNR (dB) |"
  echo "|---|---|---|---|"
  for b in -0.04 -0.02 0 0.02 0.04; do
    ./target/release/classsr eval --hr data/val --modes classsr --bias "$b" "${model_arg[@]}" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)["results"][0]
s = r["shares"]
print("| %s | %.0f%% / %.0f%% / %.0f%% | %.1f | %.3f |" % (sys.argv[1], 100*s[0], 100*s[1], 100*s[2], r["macs_percent"], r["psnr"]))' "$b"
  done
} >> "$out"
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
