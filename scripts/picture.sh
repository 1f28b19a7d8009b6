#!/usr/bin/env bash
# Regenerates the README picture docs/comparison.png: the same crop of a held-out photograph
# upscaled x4 by bicubic, classsr and the -O (original) model, the class map, and the real
# high-resolution image, left to right. The crop is where classsr and bicubic differ most.
#   bash scripts/picture.sh [--model DIR] [--image NAME] [--size PX]
set -euo pipefail
cd "$(dirname "$0")/.."
model=() image="" size=192
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=(--model "$2"); shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    *) echo "unknown option '$1'" >&2; exit 2 ;;
  esac
done
SKIP_BUILD=1 bash scripts/setup.sh >/dev/null
bash scripts/fetch-training-data.sh >/dev/null
cargo build -q --release --bin classsr --example compare
[ -n "$image" ] || image=$(ls data/val | head -1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/hr" docs
cp "data/val/$image" "$tmp/hr/"
./target/release/classsr eval --hr "$tmp/hr" --modes bicubic,classsr,original,classmap "${model[@]}" --save "$tmp/out" >&2
stem="${image%.*}"
./target/release/examples/compare docs/comparison.png "$size" \
  "$tmp/out/${stem}_bicubic.ppm" "$tmp/out/${stem}_classsr.ppm" "$tmp/out/${stem}_original.ppm" \
  "$tmp/out/${stem}_classmap.ppm" "$tmp/out/${stem}_hr.ppm"
