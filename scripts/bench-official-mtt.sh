#!/usr/bin/env bash
# Seconds per distillation iteration of MTT and HaBa-MTT on CIFAR-10 shapes: the official
# code (GeorgeCazenavette/mtt-distillation distill.py and Huage001/DatasetFactorization
# distill_fac.py, unchanged, timed by benches/official_mtt.py between the log calls that
# bracket an iteration) beside `haba bench`'s mtt and haba-mtt units (the same work: syn_steps
# student steps of ConvNet-128 on every synthetic image with the graph unroll, the
# parameter-matching loss, its gradient, the updates), one after the other on the same
# machine. A benchmark, not a test; it fetches nothing.
#   MTT=<an mtt-distillation checkout>  FAC=<a DatasetFactorization checkout>  (required)
#   BUFFERS=<an official buffer_path: CIFAR10/ConvNet/replay_buffer_0.pt, from their
#           buffer.py --zca; the times do not depend on what the experts learned>  (required)
#   CIFAR10=<class-per-folder CIFAR-10 tree: train/<class>/, test/<class>/>     (required)
#   PYTHON=<a python with torch, torchvision, kornia> (default python3)
#   IPCS="1 10"  SYN_STEPS="10" (a list: "10 30")  ITERATIONS=4 (timed iterations after one
#   warm-up)  THREADS=2  UNROLL=graph (haba's unroll: graph or recompute)
#   OUT=<directory for the JSON lines> (default bench-results/official-mtt); an official
#   result already there for the same method, IPC and syn_steps is reused (delete it to
#   re-measure), so haba's side can be timed again after a change without the official runs.
set -euo pipefail
HABA=${HABA:-target/release/haba}
PYTHON=${PYTHON:-python3}
: "${MTT:?set MTT to an mtt-distillation checkout}"
: "${FAC:?set FAC to a DatasetFactorization checkout}"
: "${BUFFERS:?set BUFFERS to the official buffer_path}"
: "${CIFAR10:?set CIFAR10 to a class-per-folder CIFAR-10 tree}"
IPCS=${IPCS:-1 10}
SYN_STEPS=${SYN_STEPS:-10}
UNROLL=${UNROLL:-graph}
ITERATIONS=${ITERATIONS:-4}
THREADS=${THREADS:-2}
OUT=${OUT:-bench-results/official-mtt}
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS

# The official scripts' settings: ZCA, 2 expert epochs from a start below epoch 2; HaBa-MTT
# with 5 hallucinators ("styles") and one basis per class per image of budget.
for steps in $SYN_STEPS; do
  flags=(--dataset CIFAR10 --zca --syn_steps "$steps" --expert_epochs 2 --max_start_epoch 2
         --buffer_path "$BUFFERS" --data_path "$OUT/data" --Iteration "$ITERATIONS")
  for ipc in $IPCS; do
    for side in mtt haba-mtt; do
      json=$OUT/official-$side-ipc$ipc-s$steps.json
      [ -s "$json" ] && continue
      if [ $side = mtt ]; then code=(--official "$MTT" --script distill.py); extra=()
      else code=(--official "$FAC" --script distill_fac.py); extra=(--n_style 5); fi
      echo "== official $side, ipc $ipc, syn_steps $steps" >&2
      "$PYTHON" benches/official_mtt.py "${code[@]}" --images "$CIFAR10" --threads "$THREADS" \
        -- "${flags[@]}" --ipc "$ipc" ${extra[@]+"${extra[@]}"} \
        2>"$OUT/official-$side-ipc$ipc-s$steps.log" | tail -1 > "$json.part"
      mv "$json.part" "$json"
    done
    echo "== haba, ipc $ipc, syn_steps $steps, unroll $UNROLL" >&2
    "$HABA" bench --device cpu --dataset cifar10 --ipc "$ipc" --syn-steps "$steps" \
      --unroll "$UNROLL" --units mtt,haba-mtt --torch off --iters "$ITERATIONS" \
      --json "$OUT/haba-ipc$ipc-s$steps.json" > "$OUT/haba-ipc$ipc-s$steps.txt" 2>&1
  done
done

"$PYTHON" - "$OUT" "$IPCS" "$SYN_STEPS" "$UNROLL" <<'EOF'
import json, os, sys
out, ipcs, steps_list, unroll = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
cpu = None
print(f"| method | IPC | syn_steps | official code, s/iteration | haba ({unroll}), s/iteration "
      "| haba speed | peak memory, official / haba |")
print("|---|---|---|---|---|---|---|")
for steps in steps_list:
  for ipc in ipcs:
    ours = json.load(open(os.path.join(out, f"haba-ipc{ipc}-s{steps}.json")))
    cpu = ours["cpu"]
    rows = {r["unit"]: r for r in ours["rows"]}
    for side, label in [("mtt", "MTT"), ("haba-mtt", "HaBa-MTT")]:
        off = json.load(open(os.path.join(out, f"official-{side}-ipc{ipc}-s{steps}.json")))
        o, r = off["median_seconds"], rows[side]
        print(f"| {label} | {ipc} | {steps} | {o:.2f} | {r['haba_seconds']:.2f} | {o / r['haba_seconds']:.2f}x | "
              f"{off['peak_rss_bytes'] / 1e6:.0f} / {r['haba']['peak_rss_bytes'] / 1e6:.0f} MB |")
print(f"\nCPU: {cpu['model']} ({cpu['kernels']} kernels); official code on torch {off['torch']}, "
      f"{off['threads']} threads. The official peak includes the dataset it loads (and ZCA's "
      "fit); haba's units run on random pixels of the same shape.")
EOF
