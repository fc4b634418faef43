#!/usr/bin/env bash
# `haba bench` on a machine with an NVIDIA GPU: haba on wgpu (the GPU's Vulkan driver, our
# WGSL kernels) against PyTorch with CUDA, at both datasets' official shapes, in a few
# minutes. The binary may be built elsewhere and copied here with this repository.
#
#   scripts/gpu-bench.sh            # full settings
#   scripts/gpu-bench.sh --quick    # small settings (also a dry run on a CPU's lavapipe)
#
# Environment:
#   HABA=<binary>            default target/release/haba
#   OUT=<directory>          default bench-results; gets bench-gpu-<dataset>.{json,txt}
#   DEVICE=gpu|cuda          default gpu (cuda needs a binary built with --features cuda)
#   VULKAN_DEBS=<directory>  .deb files of the Vulkan loader (libvulkan1), unpacked into /
#                            when the machine has no loader (a bare container)
#   HABA_TORCH_PYTHON=<python with torch>   default python3
#   UNITS=<a,b,...>          only these units (default all)
#   UNIT_TIMEOUT=<seconds>   per dataset, default 200
set -euo pipefail
cd "$(dirname "$0")/.."
HABA=${HABA:-target/release/haba}
OUT=${OUT:-bench-results}
DEVICE=${DEVICE:-gpu}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-200}
QUICK=()
[ "${1:-}" = --quick ] && QUICK=(--quick)
[ -n "${UNITS:-}" ] && QUICK+=(--units "$UNITS")
mkdir -p "$OUT"

# (grep without -q: an early exit would fail the pipeline under pipefail)
if ! ldconfig -p | grep 'libvulkan.so.1' >/dev/null; then
  if [ -n "${VULKAN_DEBS:-}" ]; then
    for f in "$VULKAN_DEBS"/*.deb; do dpkg -x "$f" /; done
    ldconfig
  else
    echo "no Vulkan loader (libvulkan.so.1): install libvulkan1 or set VULKAN_DEBS" >&2
    exit 1
  fi
fi
# Containers often mount NVIDIA's Vulkan driver manifest outside the loader's search path.
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
             /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; break; fi
  done
fi
# On a software adapter every kernel is compiled by LLVM: skip autotuning's trial runs.
[ "${1:-}" = --quick ] && export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for ds in fashion-mnist cifar10; do
  echo "== $ds on --device $DEVICE" >&2
  timeout "$UNIT_TIMEOUT" "$HABA" bench --device "$DEVICE" --dataset "$ds" "${QUICK[@]}" \
    --json "$OUT/bench-gpu-$ds.json" | tee "$OUT/bench-gpu-$ds.txt"
done
