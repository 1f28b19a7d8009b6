#!/usr/bin/env bash
# Fetches the training photographs: the JPEG wallpapers of Debian's plasma-workspace-wallpapers
# package that carry camera EXIF data (photographs, not renderings), largest size of each, into
# data/train and data/val (every third one held out for validation). data/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d data/train ] && [ -d data/val ] && [ -n "$(ls data/val 2>/dev/null)" ]; then
  echo "data/train: $(ls data/train | wc -l) images, data/val: $(ls data/val | wc -l) images (already there)"
  exit 0
fi
# never replace photographs someone put there
for d in data/train data/val; do
  if [ -n "$(ls "$d" 2>/dev/null)" ]; then
    echo "error: $d holds files but the split is incomplete; move them away (or fill data/val) and run this again" >&2
    exit 1
  fi
done
# (the package lists may need an update, which only root may make)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download plasma-workspace-wallpapers >/dev/null 2>&1) \
  || { $sudo apt-get update -q >/dev/null 2>&1 || true; (cd "$tmp" && apt-get download plasma-workspace-wallpapers >/dev/null); }
dpkg-deb -x "$tmp"/plasma-workspace-wallpapers_*.deb "$tmp/x"
# filled beside data/ and moved into place at the end, so an interrupted run leaves no
# partial split behind
stage=data/.fetch-training-data
rm -rf "$stage"
mkdir -p "$stage/train" "$stage/val"
n=0
for dir in "$tmp"/x/usr/share/wallpapers/*/; do
  name=$(basename "$dir")
  # largest regular JPEG of this wallpaper (the smaller sizes are symlinks)
  best=$(find "$dir" -path '*images*' -type f \( -name '*.jpg' -o -name '*.jpeg' \) -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  [ -n "$best" ] || continue
  # photographs carry EXIF (read from a process substitution: in a pipe, grep -q stopping
  # at the first match would fail head with SIGPIPE and, under pipefail, skip the photograph)
  grep -aq Exif < <(head -c 65536 "$best") || continue
  n=$((n + 1))
  if [ $((n % 3)) -eq 0 ]; then dest=val; else dest=train; fi
  cp "$best" "$stage/$dest/$name.jpg"
done
rmdir data/train data/val 2>/dev/null || true
mv "$stage/train" "$stage/val" data/
rmdir "$stage"
echo "data/train: $(ls data/train | wc -l) images, data/val: $(ls data/val | wc -l) images"
