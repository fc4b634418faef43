#!/usr/bin/env bash
# Every method at equal storage on one dataset and budget, at a scale a CPU allows (a
# benchmark, not a test): DC, DSA, DM, MTT with and without HaBa, and random real images,
# each evaluated the same way, in one `haba compare` table. Every run directory keeps its
# report.json with all its settings.
#
#   DATASET=fashion-mnist IPC=10 scripts/method-table.sh
#   DATASET=path/to/cifar10-tree IPC=1 scripts/method-table.sh
#
# Environment (defaults in brackets):
#   HABA [target/release/haba]  DATASET [fashion-mnist]  IPC [10]  SEED [0]
#   OUT [runs/method-table-<dataset>-ipc<IPC>]
#   NET [ConvNetW32]: every network (DM's embedder, DC's network, the experts, the evaluation)
#   EVAL_NETS [5]  EVAL_EPOCHS [300]  BATCH_REAL [64]
#   DM_ITERATIONS [300]  MTT_ITERATIONS [100]
#   DC_ITERATIONS [reference iterations: 200 at IPC 1, 10 at larger IPCs]
#   EXPERTS [2]  EXPERT_EPOCHS [4]  SYN_STEPS [10]
#   HABA_ARGS: extra flags of the HaBa rows (the default at IPC 1 on colour data:
#              --single-channel --hallucinators 1 --no-contrastive, as the paper's IPC 1)
set -euo pipefail
HABA=${HABA:-target/release/haba}
DATASET=${DATASET:-fashion-mnist}
IPC=${IPC:-10}
SEED=${SEED:-0}
NET=${NET:-ConvNetW32}
EVAL_NETS=${EVAL_NETS:-5}
EVAL_EPOCHS=${EVAL_EPOCHS:-300}
BATCH_REAL=${BATCH_REAL:-64}
DM_ITERATIONS=${DM_ITERATIONS:-300}
DC_ITERATIONS=${DC_ITERATIONS:-$([ "$IPC" = 1 ] && echo 200 || echo 10)}
MTT_ITERATIONS=${MTT_ITERATIONS:-100}
EXPERTS=${EXPERTS:-2}
EXPERT_EPOCHS=${EXPERT_EPOCHS:-4}
SYN_STEPS=${SYN_STEPS:-10}
name=$(basename "$DATASET")
OUT=${OUT:-runs/method-table-$name-ipc$IPC}
mkdir -p "$OUT"

# The reference's outer loop at IPC (get_loops); other IPCs need --outer-loop/--inner-loop.
case $IPC in 1) outer=1;; 10) outer=10;; 20) outer=20;; 30) outer=30;; 40) outer=40;; 50) outer=50;;
  *) echo "IPC $IPC: the reference defines DC's loops for 1, 10, 20, 30, 40, 50" >&2; exit 1;; esac
common=(--device cpu --seed "$SEED" --dataset "$DATASET" --ipc "$IPC" --eval-nets "$EVAL_NETS"
        --eval-epochs "$EVAL_EPOCHS" --eval-model "$NET")
if [ -z "${HABA_ARGS+set}" ]; then
  HABA_ARGS=""
  [ "$IPC" = 1 ] && HABA_ARGS="--single-channel --hallucinators 1 --no-contrastive"
fi
read -r -a haba_args <<< "$HABA_ARGS"

run() { # dir args...: one distillation, skipped when its report exists
  local dir=$OUT/$1; shift
  [ -f "$dir/report.json" ] && return 0
  rm -rf "$dir"
  echo "== $dir" >&2
  if ! "$HABA" distill "${common[@]}" --out "$dir" "$@" > "$dir.log" 2>&1; then
    echo "   not possible or failed: $(tail -1 "$dir.log")" >&2
    rm -rf "$dir"
  fi
}
haba() { run "$@" --budget-equal "${haba_args[@]}"; }

for method in dc dsa; do
  init=noise; [ $method = dsa ] && init=real
  args=(--method $method --init $init --model "$NET" --batch-real "$BATCH_REAL"
        --iterations $((DC_ITERATIONS * outer)) --checkpoint-every 1000000)
  run $method "${args[@]}" --no-haba
  haba haba-$method "${args[@]}"
done
args=(--method dm --embedder "$NET" --batch-real "$BATCH_REAL" --iterations "$DM_ITERATIONS")
run dm "${args[@]}" --no-haba
haba haba-dm "${args[@]}"

buffer=$OUT/buffer
if [ ! -f "$buffer/expert-$(printf %05d $((EXPERTS - 1))).safetensors" ]; then
  echo "== experts" >&2
  "$HABA" buffer --device cpu --seed "$SEED" --dataset "$DATASET" --preprocess meanstd \
    --model "$NET" --experts "$EXPERTS" --epochs "$EXPERT_EPOCHS" --out "$buffer" > "$OUT/buffer.log" 2>&1
fi
args=(--preset quick-mtt --buffer "$buffer" --iterations "$MTT_ITERATIONS" --syn-steps "$SYN_STEPS"
      --expert-epochs 1 --max-start-epoch $((EXPERT_EPOCHS - 1)) --checkpoint-every 1000000)
run mtt "${args[@]}" --no-haba
haba haba-mtt "${args[@]}" --lr-hallucinators 10

if [ ! -f "$OUT/random-real.json" ]; then
  "$HABA" eval --device cpu --seed "$SEED" --dataset "$DATASET" --random-real "$IPC" \
    --nets "$EVAL_NETS" --epochs "$EVAL_EPOCHS" --model "$NET" --json "$OUT/random-real.json" \
    > "$OUT/random-real.log" 2>&1
  mkdir -p "$OUT/random-real" && cp "$OUT/random-real.json" "$OUT/random-real/report.json"
fi
dirs=()
for d in dc haba-dc dsa haba-dsa dm haba-dm mtt haba-mtt random-real; do
  [ -f "$OUT/$d/report.json" ] && dirs+=("$OUT/$d")
done
"$HABA" compare "${dirs[@]}" --out "$OUT" | tee "$OUT/table.md"
