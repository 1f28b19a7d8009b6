#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine: GStreamer (dev files, tools, plugins), the
# ONNX Runtime library from the onnxruntime PyPI wheel, and a release build of the plugin.
#   bash scripts/setup.sh            # everything
#   SKIP_BUILD=1 bash scripts/setup.sh
# Environment: ORT_DIR (default /usr/local/lib/gst-classsr) is where libonnxruntime goes;
# the element finds it there, or wherever ORT_DYLIB_PATH points.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ORT_DIR=${ORT_DIR:-/usr/local/lib/gst-classsr}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
# before a step that needs root: say so when there is no sudo to get it
need_root() {
  [ -z "$SUDO" ] || command -v sudo >/dev/null || { echo "error: $1 needs root: run this as root, or install sudo" >&2; exit 1; }
}

apt_packages=(
  gcc pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav
  python3 python3-pip ca-certificates xz-utils fonts-dejavu-core
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo ">> installing ${missing[*]}"
  need_root "installing packages"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust >= 1.92 (Debian 12's own rustc is older: its cargo cannot read this Cargo.lock)
rust_minor=$( (rustc --version 2>/dev/null || true) | sed -n 's/^rustc 1\.\([0-9]*\)\..*/\1/p')
if ! command -v cargo >/dev/null || [ "${rust_minor:-0}" -lt 92 ]; then
  echo "error: Rust >= 1.92 is needed (found: $(rustc --version 2>/dev/null || echo none)); install it with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi

# numpy, for the independent PSNR check of `classsr eval` in the tests
if ! python3 -c "import numpy" 2>/dev/null; then
  python3 -m pip install -q numpy 2>/dev/null || python3 -m pip install -q --break-system-packages numpy \
    || { need_root "installing python3-numpy"; $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-numpy; }
fi

# the wheel of this machine's architecture (and its ELF machine number, to tell a library
# installed for another one, e.g. a copied /usr/local, which is then replaced)
case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64 elf_machine=62 ;;
  aarch64 | arm64) arch=aarch64 elf_machine=183 ;;
  *)
    echo "error: PyPI has no onnxruntime wheel for $(uname -m): build ONNX Runtime $ORT_VERSION for it and point ORT_DYLIB_PATH at its libonnxruntime.so" >&2
    exit 1
    ;;
esac
lib="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
# the installed library's ELF machine number (none: not installed)
have=none
if [ -f "$lib" ]; then
  have=$(python3 -c 'import sys; print(int.from_bytes(open(sys.argv[1], "rb").read(20)[18:20], "little"))' "$lib" 2>/dev/null || echo 0)
  [ "$have" = "$elf_machine" ] || echo ">> $lib is not built for $arch: fetching the $arch one"
fi
if [ "$have" != "$elf_machine" ]; then
  echo ">> fetching onnxruntime==$ORT_VERSION ($arch) from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux_2_17_$arch" \
    "onnxruntime==$ORT_VERSION" -d "$tmp"
  (cd "$tmp" && python3 -m zipfile -e onnxruntime-*.whl x)
  # (sudo only where this user cannot write, e.g. not for ORT_DIR=$HOME/...)
  ort_sudo=$SUDO
  existing=$ORT_DIR
  while [ ! -e "$existing" ]; do existing=$(dirname "$existing"); done
  if [ -w "$existing" ]; then
    ort_sudo=""
  else
    need_root "writing $ORT_DIR"
  fi
  $ort_sudo mkdir -p "$ORT_DIR"
  # copied under a temporary name and renamed: an interrupted copy is not taken as installed
  $ort_sudo cp "$tmp/x/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$lib.part"
  $ort_sudo mv -f "$lib.part" "$lib"
fi
echo ">> ONNX Runtime: $lib"

if [ -z "${SKIP_BUILD:-}" ]; then
  echo ">> building the plugin (release)"
  cargo build --release --lib --bins
  echo ">> plugin: $(pwd)/target/release/libgstclasssr.so (GST_PLUGIN_PATH=$(pwd)/target/release)"
fi
