#!/usr/bin/env bash
# Builds the browser page into web/dist/: index.html, main.js, the WebAssembly module with
# its JS glue (haba_web.js, haba_web_bg.wasm) and the shipped distilled set.
#
# Burn's web examples use `wasm-pack build --target web`; wasm-pack downloads its
# wasm-bindgen and wasm-opt binaries from GitHub at build time, so this script does the
# build and glue steps itself with tools from the package registries: cargo builds the
# module and the `wasm-bindgen` command (installed from crates.io at the version Cargo.lock
# pins) writes the glue. No wasm-opt: Debian 12's (binaryen 108) breaks wasm-bindgen's
# table of JS references ("WebAssembly.Table.set(): Argument 1 is invalid").
set -euo pipefail
cd "$(dirname "$0")"

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$version" ]; then
    echo "installing wasm-bindgen-cli $version (once)" >&2
    cargo install wasm-bindgen-cli --version "$version"
fi
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true

# Outside the clone, as the main build; a separate folder so neither build invalidates
# the other's outputs.
target="${HABA_WEB_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/haba/target}-web}"
# Burn's WebGPU bindings need web-sys's unstable APIs, as in Burn's web examples.
RUSTFLAGS="--cfg=web_sys_unstable_apis" CARGO_TARGET_DIR="$target" \
    cargo build --release --locked --target wasm32-unknown-unknown

rm -rf dist
mkdir -p dist
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
    --out-dir dist \
    "$target/wasm32-unknown-unknown/release/haba_web.wasm"
cp index.html main.js assets/distilled.safetensors dist/
echo "web/dist: $(du -h dist/haba_web_bg.wasm | cut -f1) of WebAssembly; serve it with" \
    "python3 -m http.server -d web/dist 8000" >&2
