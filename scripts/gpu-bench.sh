#!/usr/bin/env bash
# GPU benchmark of the element (960x540 -> 3840x2160, cache off), in two halves:
#
#   [BUNDLES=DIR] bash scripts/gpu-bench.sh prepare
#       here (Debian, with the build): the release plugin and 20 frames of vtest.avi at
#       960x540 as PNG, under .gpu/ (git-ignored). With BUNDLES, also self-contained ONNX
#       Runtime CUDA and GStreamer runtime bundles for a GPU host that has neither, made by
#       DIR/ort-cuda-bundle.sh and DIR/gst-runtime-bundle.sh (scripts of your own: the first
#       must leave .gpu/ort/unpack.sh, which sets ORT_DYLIB_PATH, the second .gpu/gst/env.sh,
#       which sets up GStreamer). Without them the GPU host needs GStreamer 1.22 and the
#       onnxruntime-gpu library (ORT_DYLIB_PATH) installed.
#   bash scripts/gpu-bench.sh run OUT [FRAMES]
#       on the GPU host (carrying .gpu/): fps of modes classsr / original / bicubic, with and
#       without frame-graphs, on videotestsrc and the clip; card, driver and results in
#       OUT/gpu-bench.md. fps = frames / (time of a FRAMES run − time of a 10-frame run), so
#       start-up and model loading are not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}

if [ "$cmd" = prepare ]; then
  SKIP_BUILD=1 bash scripts/setup.sh >/dev/null
  cargo build --release --lib
  mkdir -p .gpu/plugin .gpu/clip
  cp target/release/libgstclasssr.so .gpu/plugin/
  # multifilesrc (for the clip's frames) is not among the runtime bundle's core plugins
  cp "$(pkg-config --variable=pluginsdir gstreamer-1.0)/libgstmultifile.so" .gpu/plugin/
  if [ -n "${BUNDLES:-}" ]; then
    bash "$BUNDLES/ort-cuda-bundle.sh" .gpu/ort
    bash "$BUNDLES/gst-runtime-bundle.sh" .gpu/gst .gpu/plugin/*.so
  fi
  clip=$(bash scripts/fetch-clip.sh)
  rm -f .gpu/clip/*.png
  gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videoscale \
    ! video/x-raw,format=RGB,width=960,height=540 ! identity eos-after=20 \
    ! pngenc compression-level=1 ! multifilesink location=.gpu/clip/%03d.png
  du -sh .gpu/*
  exit 0
fi

if [ "$cmd" != run ]; then
  echo "usage: [BUNDLES=DIR] $0 prepare | $0 run OUT [FRAMES]" >&2
  exit 2
fi
out=${2:?OUT folder}
frames=${3:-300}
# DEVICE=cpu SIZE=192x108 PLUGIN=target/release: a quick check of this script without a GPU
device=${DEVICE:-cuda}
size=${SIZE:-960x540}
w=${size%x*}
h=${size#*x}
mkdir -p "$out"
if [ -d .gpu/ort ]; then
  # shellcheck disable=SC1091
  source .gpu/ort/unpack.sh
  # shellcheck disable=SC1091
  source .gpu/gst/env.sh
fi
export GST_PLUGIN_PATH="$PWD/${PLUGIN:-.gpu/plugin}"
gst-inspect-1.0 classsr >/dev/null

sources() {
  case $1 in
    videotestsrc) echo "videotestsrc pattern=ball num-buffers=$2 ! video/x-raw,format=RGB,width=$w,height=$h" ;;
    clip) echo "multifilesrc location=.gpu/clip/%03d.png loop=true caps=image/png,framerate=30/1 ! pngdec \
! videoconvert ! videoscale ! video/x-raw,format=RGB,width=$w,height=$h ! identity eos-after=$2" ;;
  esac
}
seconds() { # source mode graphs frames
  local t0 t1 log="$out/log-$1-$2-$3.txt"
  t0=$(date +%s.%N)
  # (called in $(...), where set -e does not apply: a failed run must say so itself)
  # shellcheck disable=SC2046
  if ! gst-launch-1.0 -q $(sources "$1" "$4") ! classsr device="$device" cache=off mode="$2" frame-graphs="$3" \
    ! fakesink sync=false >"$log" 2>&1; then
    echo "error: $1 mode=$2 frame-graphs=$3 failed:" >&2
    cat "$log" >&2
    return 1
  fi
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
{
  echo "# GPU benchmark"
  echo
  echo "\`bash scripts/gpu-bench.sh run OUT $frames\` on $(date -u +%Y-%m-%d)"
  echo
  echo "* card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo unknown)"
  echo "* device=$device, ${w}x${h} RGB -> x4, cache=off, embedded default model, fakesink sync=false"
  echo
  echo "| source | mode | frame-graphs | fps |"
  echo "|---|---|---|---|"
} >"$out/gpu-bench.md"
for src in videotestsrc clip; do
  for mode in classsr original bicubic; do
    for graphs in false true; do
      [ "$mode" = bicubic ] && [ "$graphs" = true ] && continue
      short=$(seconds "$src" "$mode" "$graphs" 10)
      long=$(seconds "$src" "$mode" "$graphs" "$frames")
      fps=$(python3 -c "print(($frames - 10) / ($long - $short))")
      printf '| %s | %s | %s | %.1f |\n' "$src" "$mode" "$graphs" "$fps" | tee -a "$out/gpu-bench.md"
    done
  done
done
echo "wrote $out/gpu-bench.md"
