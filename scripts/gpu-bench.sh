#!/usr/bin/env bash
# GPU benchmark of the element (960x540 -> 3840x2160, cache off), in two halves:
#
#   [BUNDLES=DIR] bash scripts/gpu-bench.sh prepare
#       here (Debian, with the build): the release plugin and 20 frames of vtest.avi at
#       960x540 as raw RGB, under .gpu/ (git-ignored). With BUNDLES, also self-contained ONNX
#       Runtime CUDA and GStreamer runtime bundles for a GPU host that has neither, made by
#       DIR/ort-cuda-bundle.sh and DIR/gst-runtime-bundle.sh (scripts of your own: the first
#       must leave .gpu/ort/unpack.sh, which sets ORT_DYLIB_PATH, the second .gpu/gst/env.sh,
#       which sets up GStreamer). Without them the GPU host needs GStreamer 1.22 and the
#       onnxruntime-gpu library (ORT_DYLIB_PATH) installed.
#   bash scripts/gpu-bench.sh run OUT [FRAMES]
#       on the GPU host (carrying .gpu/): in OUT/gpu-bench.md, the card and driver, then
#       1. where a frame's time goes with frame-graphs (medians of the stats' per-step times;
#          one classsr run with the branches' PRelu as written, CLASSSR_PRELU=as-written, not
#          in the Max form used on CUDA), and ONNX Runtime's per-operator profile of one run
#          (scripts/ort_profile.py);
#       2. the first frames of the clip on the GPU against the CPU's (8-bit levels, PSNR);
#       3. fps of modes classsr / original / bicubic, with and without frame-graphs, and with
#          precision=fp16, on videotestsrc and the clip. fps = (N − 10) / (time of an N-frame
#          run − time of a 10-frame run), so start-up and model loading are not counted; N is
#          FRAMES with frame-graphs, 10 + FRAMES/10 without (the CPU merges: a few fps).
#       Logs of every run in OUT/logs.tar.gz. A shorter run: STAGES, COMPARE, SOURCES and
#       CONFIGS replace the lists of the same names below. With DEADLINE=S, no pipeline starts after S seconds
#       (its row says failed, its log why).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
cmd=${1:-}

if [ "$cmd" = prepare ]; then
  SKIP_BUILD=1 bash scripts/setup.sh >/dev/null
  cargo build --release --lib
  mkdir -p .gpu/plugin .gpu/clip
  # without debug info: the plugin travels to the GPU host
  strip -o .gpu/plugin/libgstclasssr.so target/release/libgstclasssr.so
  # multifilesrc (for the clip's frames) is not among the runtime bundle's core plugins
  cp "$(pkg-config --variable=pluginsdir gstreamer-1.0)/libgstmultifile.so" .gpu/plugin/
  if [ -n "${BUNDLES:-}" ]; then
    bash "$BUNDLES/ort-cuda-bundle.sh" .gpu/ort
    bash "$BUNDLES/gst-runtime-bundle.sh" .gpu/gst .gpu/plugin/*.so
  fi
  clip=$(bash scripts/fetch-clip.sh)
  # raw frames (31 MB): a PNG decoder in the pipeline held the clip to about 70 fps
  rm -f .gpu/clip/*.png .gpu/clip/*.rgb
  gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videoscale \
    ! video/x-raw,format=RGB,width=960,height=540 ! identity eos-after=20 \
    ! multifilesink location=.gpu/clip/%03d.rgb
  du -sh .gpu/*
  exit 0
fi

if [ "$cmd" != run ]; then
  echo "usage: [BUNDLES=DIR] $0 prepare | $0 run OUT [FRAMES]" >&2
  exit 2
fi
out=${2:?OUT folder}
# (relative to where the script was started)
case $out in /*) ;; *) out=$caller/$out ;; esac
frames=${3:-300}
# DEVICE=cpu SIZE=192x108 PLUGIN=target/release: a quick check of this script without a GPU
device=${DEVICE:-cuda}
size=${SIZE:-960x540}
w=${size%x*}
h=${size#*x}
mkdir -p "$out"
if [ -d .gpu/ort ]; then
  # (the bundles' scripts are not written for set -euo pipefail)
  set +euo pipefail
  # shellcheck disable=SC1091
  source .gpu/ort/unpack.sh
  # shellcheck disable=SC1091
  source .gpu/gst/env.sh
  set -euo pipefail
fi
plugin=${PLUGIN:-.gpu/plugin}
case $plugin in /*) ;; *) plugin=$PWD/$plugin ;; esac
export GST_PLUGIN_PATH=$plugin
gst-inspect-1.0 classsr >/dev/null

q="queue max-size-buffers=4"
sources() {
  case $1 in
    videotestsrc) echo "videotestsrc pattern=ball num-buffers=$2 ! video/x-raw,format=RGB,width=$w,height=$h ! $q" ;;
    clip) echo "multifilesrc location=.gpu/clip/%03d.rgb loop=true \
caps=video/x-raw,format=RGB,width=960,height=540,framerate=30/1 \
! videoconvert ! videoscale ! video/x-raw,format=RGB,width=$w,height=$h ! identity eos-after=$(($2 + 1)) ! $q" ;;
    # (identity lets N - 1 of these frames through with eos-after=N)
  esac
}
logs="$out/logs"
mkdir -p "$logs"
raw=$(mktemp -d)
# the logs are packed whatever happens to the runs
trap 'rm -rf "$raw"; tar czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"' EXIT
# seconds SOURCE FRAMES NAME SINK PROPS...: wall time of one pipeline, or a failure (logged)
seconds() {
  local src=$1 n=$2 name=$3 sink=$4 t0 t1 log
  shift 4
  log="$logs/$src-$name-$n.txt"
  if [ "${DEADLINE:-0}" -gt 0 ] && [ "$SECONDS" -gt "$DEADLINE" ]; then
    echo "skipped: $src $name ($*): past DEADLINE=$DEADLINE s" | tee "$log" >&2
    return 1
  fi
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  if ! timeout 90 gst-launch-1.0 ${GST_FLAGS:-} $(sources "$src" "$n") ! classsr device="$device" "$@" ! $sink >"$log" 2>&1; then
    echo "error: $src $name ($*) failed, see $log:" >&2
    tail -5 "$log" >&2
    return 1
  fi
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo unknown)
{
  echo "# GPU benchmark"
  echo
  echo "\`bash scripts/gpu-bench.sh run OUT $frames\` on $(date -u +%Y-%m-%d)"
  echo
  echo "* card: $card"
  echo "* device=$device, ${w}x${h} RGB -> x4, cache=off, embedded default model, fakesink sync=false"
} >"$out/gpu-bench.md"
# where the time goes: the stats messages of a frame-graphs run (gst-launch -m prints them)
{
  echo
  echo "## Where a frame's time goes (frame-graphs, clip, ms per frame, medians after 10 frames)"
  echo
  echo "| run | upload | classify | branch1 | branch2 | branch3 | merge | download | total | tiles per class |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} >>"$out/gpu-bench.md"
# mode:precision[:PRelu form] (CLASSSR_PRELU: as-written, max, relu-sum; the usual form without)
for c in ${STAGES:-classsr:fp32 original:fp32 classsr:fp16 classsr:fp32:as-written}; do
  IFS=: read -r mode prec prelu <<<"$c"
  name="stages-$mode-$prec${prelu:+-$prelu}"
  label="$mode $prec${prelu:+ prelu=$prelu}"
  if CLASSSR_PRELU="${prelu:-}" GST_FLAGS=-m seconds clip 60 "$name" "fakesink sync=false" cache=off mode="$mode" \
    frame-graphs=on precision="$prec" stats=true >/dev/null; then
    python3 - "$logs/clip-$name-60.txt" "$label" >>"$out/gpu-bench.md" <<'PY' || echo "| $label | failed |" >>"$out/gpu-bench.md"
import re, statistics, sys
keys = ["upload", "classify", "branch1", "branch2", "branch3", "merge", "download", "processing"]
rows = []
for line in open(sys.argv[1], errors="replace"):
    if "classsr-stats" not in line:
        continue
    v = {k: int(m.group(1)) / 1e6 for k in keys if (m := re.search(k + r"-time=\(guint64\)(\d+)", line))}
    tiles = [int(m.group(1)) for k in (1, 2, 3) if (m := re.search(rf"tiles-class{k}=\(uint\)(\d+)", line))]
    rows.append((v, tiles))
rows = rows[10:]
if not rows:
    print(f"{sys.argv[2]}: no stats messages")
    sys.exit()
med = {k: statistics.median(r[0].get(k, 0.0) for r in rows) for k in keys}
tiles = [statistics.median(r[1][i] for r in rows) for i in range(3)] if all(len(r[1]) == 3 for r in rows) else []
print("| " + sys.argv[2] + " | " + " | ".join("%.2f" % med[k] for k in keys) + f" | {tiles} |")
PY
  else
    echo "| $label | failed |" >>"$out/gpu-bench.md"
  fi
done
# ONNX Runtime's profiles (per operator, and where each ran) of one more, untimed run
mkdir -p "$out/profile"
CLASSSR_ORT_PROFILE="$out/profile/p" seconds clip 60 profile "fakesink sync=false" cache=off mode=classsr \
  frame-graphs=on >/dev/null || true
{
  echo
  echo "ONNX Runtime's profile of one more classsr fp32 run of 60 frames (all its sessions; \`scripts/ort_profile.py\`):"
  echo
  echo '```'
  python3 scripts/ort_profile.py "$out/profile/p" 6 || true
  echo '```'
} >>"$out/gpu-bench.md"
rm -rf "$out/profile"

# the same frames on the GPU and on the CPU
{
  echo
  echo "## GPU output against the CPU's (first 3 frames of the clip, 8-bit RGB)"
  echo
  echo "| run | max difference | values that differ | PSNR against the CPU (dB) |"
  echo "|---|---|---|---|"
} >>"$out/gpu-bench.md"
runs=${COMPARE:-"cpu:cpu:off:fp32 $device:cuda-graphs:on:fp32 $device:cuda:off:fp32 $device:cuda-graphs-fp16:on:fp16"}
for r in $runs; do
  IFS=: read -r dev name graphs prec <<<"$r"
  # (a failed run's partial frames are not compared)
  device=$dev seconds clip 3 "compare-$name" "filesink location=$raw/$name.rgb" cache=off \
    frame-graphs="$graphs" precision="$prec" >/dev/null || rm -f "$raw/$name.rgb"
done
# shellcheck disable=SC2046
python3 - "$raw" $(for r in $runs; do IFS=: read -r _ name _ <<<"$r"; [ "$name" = cpu ] || echo "$name"; done) \
  >>"$out/gpu-bench.md" <<'PY' || echo "| comparison | failed (see the output) | | |" >>"$out/gpu-bench.md"
import os, sys
import numpy as np
d = sys.argv[1]
ref_path = os.path.join(d, "cpu.rgb")
if not os.path.exists(ref_path) or os.path.getsize(ref_path) == 0:
    print("| cpu | failed | | |")
    sys.exit()
ref = np.fromfile(ref_path, np.uint8).astype(np.int16)
for name in sys.argv[2:]:
    p = os.path.join(d, name + ".rgb")
    if not os.path.exists(p) or os.path.getsize(p) != ref.size:
        print(f"| {name} | failed | | |")
        continue
    x = np.fromfile(p, np.uint8).astype(np.int16)
    diff = np.abs(x - ref)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = "identical" if mse == 0 else "%.2f" % (10 * np.log10(255.0**2 / mse))
    print(f"| {name} | {int(diff.max())} | {100.0 * np.count_nonzero(diff) / diff.size:.3f} % | {psnr} |")
PY
{
  echo
  echo "## fps"
  echo
  echo "| source | mode | frame-graphs | precision | max-batch | fps |"
  echo "|---|---|---|---|---|---|"
} >>"$out/gpu-bench.md"
# mode:frame-graphs:precision:max-batch (0 = automatic, 256 with CUDA)
configs=${CONFIGS:-"classsr:off:fp32:0 classsr:on:fp32:0 original:off:fp32:0 original:on:fp32:0 bicubic:off:fp32:0 \
classsr:on:fp16:0 original:on:fp16:0"}
for src in ${SOURCES:-videotestsrc clip}; do
  for c in $configs; do
    IFS=: read -r mode graphs prec batch <<<"$c"
    props=(cache=off mode="$mode" frame-graphs="$graphs" precision="$prec" max-batch="$batch")
    name="$mode-$graphs-$prec-$batch"
    # (without frame graphs the frame is merged on the CPU: a few fps at this size)
    n=$frames
    [ "$graphs" = off ] && n=$((10 + frames / 10))
    if short=$(seconds "$src" 10 "$name" "fakesink sync=false" "${props[@]}") \
      && long=$(seconds "$src" "$n" "$name" "fakesink sync=false" "${props[@]}"); then
      fps=$(python3 -c "d = $long - $short; print('%.1f' % (($n - 10) / d) if d > 0 and $n > 10 else 'failed')")
    else
      fps=failed
    fi
    echo "| $src | $mode | $graphs | $prec | $batch | $fps |" | tee -a "$out/gpu-bench.md"
  done
done

cat "$out/gpu-bench.md"
echo "wrote $out/gpu-bench.md"
