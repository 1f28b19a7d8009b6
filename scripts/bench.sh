#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: machine, commands and results of the element benchmarks
# (examples/bench.rs) on vtest.avi and videotestsrc, and the quality / bias tables of
# `classsr eval` on the held-out photographs. Not a test: numbers depend on the machine.
#   bash scripts/bench.sh [--frames N] [--reps R] [--model DIR] [--paired-rounds N]
#                                             # (--paired-rounds: rounds of the cache=class
#                                             # against cache=off pairs, 2 x reps unless set)
#   BIASES="-1 0 1" bash scripts/bench.sh     # the bias values of the bias table
#   bash scripts/bench.sh --cache-only ...    # reruns only the per-tile cache section and
#                                             # puts it in place of the one in BENCHMARKS.md
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BUILD=1 bash scripts/setup.sh >/dev/null
clip=$(bash scripts/fetch-clip.sh)
bash scripts/fetch-training-data.sh >/dev/null
cargo build -q --release --example bench --bin classsr
args=("$@")
model_arg=()
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = "--model" ]; then
    [ $((i + 1)) -lt ${#args[@]} ] || { echo "usage: bash scripts/bench.sh [--frames N] [--reps R] [--model DIR] [--paired-rounds N] [--cache-only]" >&2; exit 2; }
    model_arg=(--model "${args[$((i + 1))]}")
  fi
done
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GB RAM"
if [[ " ${args[*]} " == *" --cache-only "* ]]; then
  [ -f BENCHMARKS.md ] || { echo "--cache-only replaces a section of BENCHMARKS.md: run bash scripts/bench.sh first" >&2; exit 2; }
  out=$(mktemp)
  ./target/release/examples/bench "$clip" "${args[@]}" > "$out"
  # the new section, headed by where it comes from, in place of the old one (up to the next
  # top-level section)
  python3 - "$out" "bash scripts/bench.sh ${args[*]}" "$(date -u +%Y-%m-%d)" "$machine" <<'PY'
import re, sys
new = open(sys.argv[1]).read().rstrip("\n").split("\n")
head, body = new[0], new[1:]
note = ["", "*This section alone was rerun by `%s` on %s (%s): its numbers are not comparable with the rest of the file's, only with each other.*" % (sys.argv[2], sys.argv[3], sys.argv[4])]
doc = open("BENCHMARKS.md").read()
m = re.search(r"^## Per-tile cache.*?(?=^## (?!#))", doc, flags=re.S | re.M)
if not m:
    sys.exit("BENCHMARKS.md has no per-tile cache section to replace")
doc = doc[:m.start()] + "\n".join([head] + note + body) + "\n\n" + doc[m.end():]
open("BENCHMARKS.md", "w").write(doc)
PY
  rm -f "$out"
  echo "replaced the per-tile cache section of BENCHMARKS.md"
  exit 0
fi
eval_json() { ./target/release/classsr eval --hr data/val --device cpu "${model_arg[@]}" --json "$@"; }
model=$(eval_json --modes bicubic | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("%s (family %s, %s)" % (d["model"], d["family"], d["provenance"]))')
# bias values: multiples of the model's QoS bias step (the known-answer model's is not
# measured, and its logits are tiny)
step=$(eval_json --modes bicubic | python3 -c 'import json,sys; print(json.load(sys.stdin)["qos_bias_step"])')
case "$model" in
  *known-answer*) biases=${BIASES:-"-0.04 -0.02 0 0.02 0.04"} ;;
  *) biases=${BIASES:-$(python3 -c "s=$step; print(' '.join('%.2f' % (k*s) for k in (-3,-2,-1,0,1,2,3)))")} ;;
esac
# and, for a model whose routing was calibrated to a MACs budget at export, biases that undo
# half, all and one and a half of that calibration (towards branch3: the classifier as trained)
manifest="${model_arg[1]:-models/fsrcnn}/manifest.json"
if [ -z "${BIASES:-}" ] && [ -f "$manifest" ]; then
  biases="$biases $(python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))["provenance"]["details"].get("routing_offset")
if o is not None and o < 0:
    print(" ".join("%.2f" % (-o * k) for k in (0.5, 1.0, 1.5)))' "$manifest")"
fi
# The GPU results are made on a GPU host by scripts/gpu-bench.sh and kept in docs/gpu-bench.md;
# they are copied in, not rerun.
gpu_section() {
  [ -f docs/gpu-bench.md ] || return 0
  echo
  echo "## On a GPU"
  echo
  echo "Copied from [docs/gpu-bench.md](docs/gpu-bench.md), the output of \`scripts/gpu-bench.sh\` on a GPU host (not rerun by bench.sh):"
  echo
  sed -e '1d' -e 's/^#/##/' docs/gpu-bench.md
}
out=$(mktemp)
./target/release/examples/bench "$clip" --photos data/val "${args[@]}" > "$out"
{
  echo
  echo "## Quality on real photographs"
  echo
  echo "\`classsr eval --hr data/val --modes bicubic,branch1,branch2,branch3,original,classsr\` ($(ls data/val | wc -l) held-out photographs of \`scripts/fetch-training-data.sh\`, x4 from antialiased bicubic LR, RGB PSNR with a 4-pixel border shaved, SSIM on Y):"
  echo
  ./target/release/classsr eval --hr data/val --device cpu "${model_arg[@]}" --modes bicubic,branch1,branch2,branch3,original,classsr \
    | grep '^|'
  echo
  echo "## The bias knob on real photographs"
  echo
  echo "\`classsr eval --hr data/val --modes classsr --bias B\` on the same photographs, B in steps of the model's QoS bias step ($(printf %.2f "$step")), then (for a model calibrated at export) undoing half, all and one and a half of its routing offset; original = $(eval_json --modes original | python3 -c 'import json,sys; print("%.3f dB" % json.load(sys.stdin)["results"][0]["psnr"])')."
  echo
  echo "| bias | tiles class1/2/3 | MACs % of original | PSNR (dB) |"
  echo "|---|---|---|---|"
  for b in $biases; do
    eval_json --modes classsr --bias "$b" | python3 -c '
import json, sys
r = json.load(sys.stdin)["results"][0]
s = r["shares"]
print("| %s | %.0f%% / %.0f%% / %.0f%% | %.1f | %.3f |" % (sys.argv[1], 100*s[0], 100*s[1], 100*s[2], r["macs_percent"], r["psnr"]))' "$b"
  done
} >> "$out"
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bash scripts/bench.sh ${args[*]}\` on $(date -u +%Y-%m-%d)."
  echo
  echo "* machine: $machine; every run on the CPU (device=cpu)"
  echo "* ONNX Runtime 1.31.1 (CPU), GStreamer $(gst-launch-1.0 --version | head -1 | awk '{print $NF}'), release build"
  echo "* model: $model"
  echo "* The machine is shared and noisy: compare the ratios within one run, not absolute fps across runs."
  echo
  cat "$out"
  gpu_section
} > BENCHMARKS.md
rm -f "$out"
echo "wrote BENCHMARKS.md"
