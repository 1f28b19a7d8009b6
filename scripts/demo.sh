#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: set up, fetch a real clip (vtest.avi), upscale it
# x4 with the embedded default model through gst-launch, and write a PNG of one frame with its
# bicubic counterpart. Prints where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
clip=$(bash scripts/fetch-clip.sh)
mkdir -p out
export GST_PLUGIN_PATH="$(pwd)/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
# The clip is 768x576; it is scaled to 192x144 first so the result is 768x576 again and can be
# compared with the original frames.
echo ">> upscaling $clip"
time gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videoscale \
  ! video/x-raw,format=RGB,width=192,height=144 ! classsr ! videoconvert \
  ! x264enc speed-preset=veryfast ! mp4mux ! filesink location=out/vtest-x4.mp4
# One LR frame as PNG, upscaled by the CLI with the same engine: classsr and bicubic to compare.
gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videoscale \
  ! video/x-raw,format=RGB,width=192,height=144 ! pngenc snapshot=true ! filesink location=out/vtest-lr.png
for mode in classsr bicubic; do
  target/release/classsr upscale out/vtest-lr.png "out/vtest-$mode.png" --mode $mode
done
echo "result: $(pwd)/out/vtest-x4.mp4 (768x576, x4 from 192x144)"
echo "frame:  $(pwd)/out/vtest-classsr.png (bicubic for comparison: $(pwd)/out/vtest-bicubic.png)"
