#!/usr/bin/env bash
# Seconds per reference iteration of DC and DSA (a fresh network, outer_loop matching steps
# and the inner_loop training between them): the official code (VICO-UoE/
# DatasetCondensation main.py, unchanged, timed by benches/official_dc.py) beside haba, one
# after the other on the same machine. A benchmark, not a test; it fetches nothing.
#   OFFICIAL=<a DatasetCondensation checkout>        (required)
#   PYTHON=<a python with torch and torchvision>     (default: python3)
#   CIFAR10=<class-per-folder CIFAR-10 tree>         (required: train/<class>/, test/<class>/)
#   IPCS="1 10"  ITERATIONS=2 (timed reference iterations per run)  THREADS=2
#   OUT=<directory for the JSON lines>               (default: bench-results/official-dc)
set -euo pipefail
HABA=${HABA:-target/release/haba}
PYTHON=${PYTHON:-python3}
: "${OFFICIAL:?set OFFICIAL to a DatasetCondensation checkout}"
: "${CIFAR10:?set CIFAR10 to a class-per-folder CIFAR-10 tree}"
IPCS=${IPCS:-1 10}
ITERATIONS=${ITERATIONS:-2}
THREADS=${THREADS:-2}
OUT=${OUT:-bench-results/official-dc}
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS

# The reference's outer_loop at each IPC (get_loops).
outer() { case $1 in 1) echo 1;; 10) echo 10;; 20) echo 20;; 30) echo 30;; 40) echo 40;; 50) echo 50;; esac; }
for ipc in $IPCS; do
  [ -n "$(outer "$ipc")" ] || { echo "IPCS: $ipc is not one of get_loops' 1 10 20 30 40 50" >&2; exit 1; }
done

for ipc in $IPCS; do
  for method in DC DSA; do
    lower=$(echo "$method" | tr 'A-Z' 'a-z')
    extra=()
    [ "$method" = DSA ] && extra=(--init real --dsa_strategy color_crop_cutout_flip_scale_rotate)
    echo "== official $method, ipc $ipc" >&2
    # Iterations 0..=N+1: N+1 end on the next one's clock, and the first is left out.
    "$PYTHON" benches/official_dc.py --official "$OFFICIAL" --dataset CIFAR10 \
      --images "$CIFAR10" --threads "$THREADS" -- --method "$method" --ipc "$ipc" \
      --Iteration "$((ITERATIONS + 1))" "${extra[@]}" 2>"$OUT/official-$lower-ipc$ipc.log" \
      | tail -1 > "$OUT/official-$lower-ipc$ipc.json"
    echo "== haba $lower, ipc $ipc" >&2
    steps=$(( $(outer "$ipc") * (ITERATIONS + 1) ))
    run="$OUT/haba-$lower-ipc$ipc"
    rm -rf "$run"
    "$HABA" distill --device cpu --method "$lower" --no-haba --dataset "$CIFAR10" --ipc "$ipc" \
      --iterations "$steps" --init "$([ "$method" = DSA ] && echo real || echo noise)" \
      --eval-nets 1 --eval-epochs 1 --checkpoint-every "$steps" --out "$run" \
      2>"$OUT/haba-$lower-ipc$ipc.log" >/dev/null
  done
done

# One table: the median over the timed iterations, each side's first (warm-up) left out.
"$PYTHON" - "$OUT" "$IPCS" <<'EOF'
import json, os, statistics, sys
out, ipcs = sys.argv[1], sys.argv[2].split()
loops = {"1": 1, "10": 10, "20": 20, "30": 30, "40": 40, "50": 50}
print("| method | IPC | official code, s/iteration | haba, s/iteration | haba speed | peak memory, official / haba |")
print("|---|---|---|---|---|---|")
for ipc in ipcs:
    for m in ["dc", "dsa"]:
        off = json.load(open(os.path.join(out, f"official-{m}-ipc{ipc}.json")))
        official = statistics.median(off["iteration_seconds"][1:])
        steps = [json.loads(l) for l in open(os.path.join(out, f"haba-{m}-ipc{ipc}", "metrics.jsonl"))
                 if '"objective"' in l]
        per = [x["seconds_per_iteration"] for x in steps]
        n = loops[ipc]
        iters = [sum(per[i:i + n]) for i in range(n, len(per) - n + 1, n)]
        ours = statistics.median(iters)
        mem = max(x.get("memory_bytes", 0) for x in steps) / 1e6
        print(f"| {m.upper()} | {ipc} | {official:.2f} | {ours:.2f} | {official / ours:.2f}x | "
              f"{off['peak_rss_bytes'] / 1e6:.0f} / {mem:.0f} MB |")
EOF
