#!/usr/bin/env bash
# Experts, then MTT and HaBa-MTT at equal storage beside random real images, on a CPU-sized
# scale stated by the variables below. Every run writes report.json with all its settings.
#
#   HABA=target/release/haba DATASET=fashion-mnist PREPROCESS=meanstd scripts/mtt-evidence.sh
#
# DATASET is a name `haba datasets` knows or a class-per-folder tree (train/ and test/).
set -euo pipefail

HABA=${HABA:-target/release/haba}
DATASET=${DATASET:-fashion-mnist}
PREPROCESS=${PREPROCESS:-meanstd}
MODEL=${MODEL:-ConvNetW32}
EXPERTS=${EXPERTS:-4}
EPOCHS=${EPOCHS:-6}
IPCS=${IPCS:-2}
ITERATIONS=${ITERATIONS:-300}
SYN_STEPS=${SYN_STEPS:-10}
EXPERT_EPOCHS=${EXPERT_EPOCHS:-2}
MAX_START=${MAX_START:-4}
EVAL_NETS=${EVAL_NETS:-5}
EVAL_EPOCHS=${EVAL_EPOCHS:-300}
OUT=${OUT:-runs/mtt-evidence-$(basename "$DATASET")}
DEVICE=${DEVICE:-auto}
# Extra flags for the HaBa-MTT runs only; at CIFAR-10's 1 image per class five colour
# hallucinators exceed the budget: HABA_ARGS="--single-channel --hallucinators 1 --no-contrastive".
HABA_ARGS=${HABA_ARGS:-}

common=(--device "$DEVICE" --seed 0)
mkdir -p "$OUT"
"$HABA" buffer "${common[@]}" --dataset "$DATASET" --preprocess "$PREPROCESS" --model "$MODEL" \
  --experts "$EXPERTS" --epochs "$EPOCHS" --out "$OUT/buffer"

for ipc in $IPCS; do
  shared=(--dataset "$DATASET" --preprocess "$PREPROCESS" --buffer "$OUT/buffer" --ipc "$ipc"
    --iterations "$ITERATIONS" --syn-steps "$SYN_STEPS" --expert-epochs "$EXPERT_EPOCHS"
    --max-start-epoch "$MAX_START" --lr-teacher 0.01 --lr-lr 1e-5 --checkpoint-every 50
    --eval-nets "$EVAL_NETS" --eval-epochs "$EVAL_EPOCHS" --eval-model "$MODEL")
  # The official scripts' optimisers: HaBa lr 100 momentum 0.95, plain MTT lr 1000 momentum 0.5.
  for method in haba-mtt mtt; do
    dir="$OUT/$method-ipc$ipc"
    if [ -f "$dir/report.json" ]; then continue; fi
    if [ -f "$dir/checkpoint.safetensors" ]; then
      "$HABA" distill "${common[@]}" --resume "$dir"
    elif [ "$method" = haba-mtt ]; then
      "$HABA" distill "${common[@]}" --preset haba-mtt-cifar10-ipc10 "${shared[@]}" \
        --budget-equal $HABA_ARGS --out "$dir"
    else
      "$HABA" distill "${common[@]}" --preset mtt-cifar10-ipc10 "${shared[@]}" --out "$dir"
    fi
  done
  real="$OUT/random-real-ipc$ipc.json"
  [ -f "$real" ] || "$HABA" eval "${common[@]}" --dataset "$DATASET" --preprocess "$PREPROCESS" \
    --random-real "$ipc" --model "$MODEL" --nets "$EVAL_NETS" --epochs "$EVAL_EPOCHS" --json "$real"
done
echo "reports in $OUT"
