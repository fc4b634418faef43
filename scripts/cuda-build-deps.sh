#!/usr/bin/env bash
# The one extra step before `cargo build --release --features cuda`: the LLVM 23.1 that
# Burn's CUDA runtime compiles its kernels with, from PyPI instead of GitHub.
#
# Burn 0.22's CUDA runtime (cubecl-cuda) always builds cubecl-llvm, whose build dependency
# tracel-llvm-bundler downloads an LLVM bundle from GitHub unless its folder,
# ${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-<its version>/, already holds a
# file `.tracel-llvm-installed`; cubecl-llvm then runs that folder's bin/llvm-config.
# PyPI publishes the same LLVM release as static libraries with headers and an
# llvm-config (mlc-llvm-static, X86) plus its NVPTX back end (mlc-llvm-static-extra-
# targets). This script installs both into a folder of its own and points the bundler's
# folder at it. Idempotent: a second run finds it done. Needs python3 >= 3.10 with pip and
# the package registry; after it, the cargo build needs only crates.io.
#
#   scripts/cuda-build-deps.sh && cargo build --release --features cuda
#
# Environment: PYTHON (default python3), XDG_DATA_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."

# The bundler version Cargo.lock pins, and the PyPI release that matches it.
BUNDLER=23.1.0-4
WHEELS_VERSION=23.1.1.post0
locked=$(awk '/^name = "tracel-llvm-bundler"$/ { getline; gsub(/[" ]/, "", $0); sub(/version=/, ""); print }' Cargo.lock)
if [ "$locked" != "$BUNDLER" ]; then
  echo "Cargo.lock pins tracel-llvm-bundler ${locked:-(none)}, but this script provides the LLVM" \
       "of tracel-llvm-bundler $BUNDLER (PyPI's mlc-llvm-static $WHEELS_VERSION). After a Burn" \
       "or CubeCL update, find the PyPI release of the LLVM the new bundler downloads and update" \
       "BUNDLER and WHEELS_VERSION here together." >&2
  exit 1
fi

data=${XDG_DATA_HOME:-$HOME/.local/share}
dest="$data/tracel/tracel-llvm-$BUNDLER"
if [ -f "$dest/.tracel-llvm-installed" ] && [ -x "$dest/bin/llvm-config" ]; then
  echo "LLVM $("$dest/bin/llvm-config" --version) for CUDA builds is ready in $dest"
  exit 0
fi
if [ -e "$dest" ] && [ ! -L "$dest" ]; then
  echo "$dest exists but holds no finished LLVM (an interrupted download?): remove it and run" \
       "this script again" >&2
  exit 1
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "$PYTHON is older than 3.10; the LLVM wheels need 3.10 or newer (set PYTHON)" >&2
  exit 1
fi
wheels="$data/haba/mlc-llvm-static-$WHEELS_VERSION"
echo "installing LLVM $WHEELS_VERSION (about 90 MB of wheels) into $wheels" >&2
"$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$wheels" \
  "mlc-llvm-static==$WHEELS_VERSION" "mlc-llvm-static-extra-targets==$WHEELS_VERSION"
root="$wheels/mlc_llvm_static/static"
if [ ! -x "$root/bin/llvm-config" ]; then
  echo "the wheels did not provide $root/bin/llvm-config" >&2
  exit 1
fi
if ! "$root/bin/llvm-config" --targets-built | grep NVPTX >/dev/null; then
  echo "the LLVM in $root lacks the NVPTX back end (mlc-llvm-static-extra-targets)" >&2
  exit 1
fi
mkdir -p "$(dirname "$dest")"
ln -sfn "$root" "$dest"
touch "$root/.tracel-llvm-installed"
echo "LLVM $("$dest/bin/llvm-config" --version) for CUDA builds is ready in $dest"
