#!/usr/bin/env bash
# Fetches the public static-camera clip vtest.avi (Debian's opencv-doc package, examples/data)
# into data/clips/vtest.avi. Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/clips/vtest.avi
if [ ! -f "$out" ]; then
  # (the package lists may need an update, which only root may make)
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"; rm -f "$out.part"' EXIT
  (cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1) || { $sudo apt-get update -q >/dev/null 2>&1 || true; (cd "$tmp" && apt-get download opencv-doc >/dev/null); }
  mkdir -p "$tmp/x" data/clips
  dpkg-deb --fsys-tarfile "$tmp"/opencv-doc_*.deb | tar -x -C "$tmp/x" ./usr/share/doc/opencv-doc/examples/data/vtest.avi
  # copied under a temporary name and renamed, so an interrupted run leaves no truncated clip
  cp "$tmp/x/usr/share/doc/opencv-doc/examples/data/vtest.avi" "$out.part"
  mv "$out.part" "$out"
fi
echo "$out"
