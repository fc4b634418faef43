#!/usr/bin/env bash
# The GPU table, on a machine with one NVIDIA GPU, from binaries built beforehand on a
# machine without one (copy them here with this repository), in under 10 minutes:
#   1. the wgpu tests on the real adapter (the library's test binary, filtered to wgpu);
#   2. `haba bench` at CIFAR-10's official shapes (ConvNet-128): DM, MTT and HaBa-MTT at 1
#      and 10 images per class and the evaluation epoch, on wgpu and, with a CUDA binary,
#      on CUDA, each beside PyTorch on CUDA;
#   3. MTT's peak GPU memory and time at syn_steps 10/20/40/80, both unrolls;
#   4. a short HaBa-MTT run with its evaluation, on the built-in CIFAR-10 subset.
# It writes OUT/gpu-table.md (one Markdown table) and OUT/gpu-table.json.
#
#   scripts/gpu-bench.sh            # full settings
#   scripts/gpu-bench.sh --quick    # small settings (also a dry run on a CPU's lavapipe)
#
# Environment:
#   HABA=<binary>            default target/release/haba
#   HABA_CUDA=<binary>       built with --features cuda; its rows are left out without it
#   HABA_TESTS=<binary>      the library's test binary (target/release/deps/haba-<hash>);
#                            the wgpu tests are left out without it
#   OUT=<directory>          default bench-results
#   VULKAN_DEBS=<directory>  .deb files of the Vulkan loader (libvulkan1), unpacked into /
#                            when the machine has no loader (a bare container)
#   HABA_TORCH_PYTHON=<python with torch>   default python3
#   UNITS=<a,b,...>          only these units (default all)
#   UNIT_TIMEOUT=<seconds>   per step, default 70 (eight steps: under 10 minutes in all)
set -euo pipefail
# Paths the caller gave are relative to where it was called from.
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -n "${HABA:-}" ] && HABA=$(abs "$HABA")
[ -n "${HABA_CUDA:-}" ] && HABA_CUDA=$(abs "$HABA_CUDA")
[ -n "${HABA_TESTS:-}" ] && HABA_TESTS=$(abs "$HABA_TESTS")
[ -n "${OUT:-}" ] && OUT=$(abs "$OUT")
cd "$(dirname "$0")/.."
HABA=${HABA:-target/release/haba}
OUT=${OUT:-bench-results}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-70}
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
SIZES=(--model ConvNet)
[ "${1:-}" = --quick ] && SIZES=(--quick --iters 1 --warmup 1)
started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started )) s in)" >&2; }

# 1. The wgpu tests on this machine's adapter.
if [ -n "${HABA_TESTS:-}" ]; then
  step "wgpu tests"
  timeout "$UNIT_TIMEOUT" "$HABA_TESTS" wgpu --test-threads 1 > "$OUT/gpu-tests.txt" 2>&1 \
    && echo "pass" > "$OUT/gpu-tests.status" || echo "FAIL" > "$OUT/gpu-tests.status"
  tail -3 "$OUT/gpu-tests.txt" >&2
fi

# 2. The work units, on wgpu and on CUDA, beside PyTorch on CUDA.
devices=(gpu)
[ -n "${HABA_CUDA:-}" ] && devices+=(cuda)
for device in "${devices[@]}"; do
  bin=$HABA; [ "$device" = cuda ] && bin=$HABA_CUDA
  for ipc in 1 10; do
    step "bench on $device, ipc $ipc"
    timeout "$UNIT_TIMEOUT" "$bin" bench --device "$device" --dataset cifar10 --ipc "$ipc" \
      --units "${UNITS:-dm,mtt,haba-mtt,eval-epoch}" "${SIZES[@]}" \
      --json "$OUT/bench-$device-ipc$ipc.json" > "$OUT/bench-$device-ipc$ipc.txt" || true
  done
done

# 3. MTT's memory against its unrolled steps.
step "MTT memory sweep"
timeout "$UNIT_TIMEOUT" "$HABA" bench --device gpu --dataset cifar10 --ipc 1 --units mtt \
  --mtt-sweep 10,20,40,80 "${SIZES[@]}" --json "$OUT/mtt-sweep.json" > "$OUT/mtt-sweep.txt" || true

# 4. A short HaBa-MTT run with its evaluation.
step "HaBa-MTT run"
buffer="$OUT/gpu-buffer"
rm -rf "$OUT/gpu-haba-mtt"
if timeout "$UNIT_TIMEOUT" "$HABA" buffer --device gpu --dataset embedded-cifar10 --preprocess meanstd \
     --model ConvNetW32 --experts 1 --epochs 3 --batch 64 --out "$buffer" > "$OUT/haba-mtt.txt" 2>&1 &&
   timeout "$UNIT_TIMEOUT" "$HABA" distill --device gpu --preset quick-mtt-cifar10 --buffer "$buffer" \
     --iterations "$([ "${1:-}" = --quick ] && echo 5 || echo 100)" --eval-nets 2 \
     --eval-epochs "$([ "${1:-}" = --quick ] && echo 5 || echo 300)" \
     --out "$OUT/gpu-haba-mtt" >> "$OUT/haba-mtt.txt" 2>&1; then
  echo pass > "$OUT/haba-mtt.status"
else
  echo "FAIL (exit $?, see haba-mtt.txt)" > "$OUT/haba-mtt.status"; tail -3 "$OUT/haba-mtt.txt" >&2
fi
step "done"

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows, md = [], ["| what | device | haba s | PyTorch s | speed-up | haba peak MB | PyTorch peak MB |",
                "|---|---|---|---|---|---|---|"]
mb = lambda b: "-" if b is None else f"{b / 1e6:.0f}"
num = lambda x, f: "-" if x is None else format(x, f)
for path in sorted(glob.glob(os.path.join(out, "bench-*-ipc*.json"))) + [os.path.join(out, "mtt-sweep.json")]:
    if not os.path.exists(path):
        continue
    d = json.load(open(path))
    peak = lambda x: x.get("peak_device_bytes") or x.get("peak_rss_bytes")
    for r in d["rows"]:
        t = r.get("torch") or {}
        if "syn_steps" in r:  # the sweep: one line per unroll, PyTorch's graph beside each
            ts = statistics.median(t["seconds"]) if t else None
            for unroll in ("graph", "recompute"):
                h = r[unroll]
                hs = statistics.median(h["seconds"])
                what = f"mtt, ipc {d['settings']['ipc']}, syn_steps {r['syn_steps']}, {unroll}"
                rows.append({"file": os.path.basename(path), "device": d["device"], "what": what,
                             "haba_seconds": hs, "torch_seconds": ts, **r})
                md.append(f"| {what} | {d['device']} | {hs:.4f} | {num(ts, '.4f')} | "
                          f"{num(ts and ts / hs, '.2f')} | {mb(peak(h))} | {mb(peak(t))} |")
            continue
        h = r.get("haba") or {}
        what = f"{r['unit']}, ipc {d['settings']['ipc']}"
        rows.append({"file": os.path.basename(path), "device": d["device"], "what": what, **r})
        md.append(f"| {what} | {d['device']} | {num(r.get('haba_seconds'), '.4f')} | "
                  f"{num(r.get('torch_seconds'), '.4f')} | {num(r.get('speedup'), '.2f')} | "
                  f"{mb(peak(h))} | {mb(peak(t))} |")
run = os.path.join(out, "gpu-haba-mtt", "report.json")
if os.path.exists(run):
    rep = json.load(open(run))
    s = rep["sets"][0]
    acc = f"{100 * s['result']['mean']:.2f} ± {100 * s['result']['std']:.2f} %"
    md.append(f"| HaBa-MTT run on the CIFAR-10 subset, {s['iterations']} iterations | {rep['device']} "
              f"| test accuracy {acc} | | | | |")
    rows.append({"what": "haba-mtt run", "device": rep["device"], "accuracy": s["result"]})
elif os.path.exists(os.path.join(out, "haba-mtt.status")):
    md.append(f"| HaBa-MTT run on the CIFAR-10 subset | | {open(os.path.join(out, 'haba-mtt.status')).read().strip()} | | | | |")
status = os.path.join(out, "gpu-tests.status")
if os.path.exists(status):
    md.append(f"| wgpu tests on this adapter | | {open(status).read().strip()} | | | | |")
open(os.path.join(out, "gpu-table.md"), "w").write("\n".join(md) + "\n")
json.dump(rows, open(os.path.join(out, "gpu-table.json"), "w"), indent=1)
print("\n".join(md))
PY
