#!/usr/bin/env bash
# Baseline accuracies for the README (a benchmark, not a test): random real images at 1, 10
# and 50 per class, and ConvNet-3 on the whole training split, on Fashion-MNIST and on a
# CIFAR-10 copy. Data locations come from the environment:
#   FMNIST=<fashion-mnist name or folder>  (default: fashion-mnist, found by `haba datasets`)
#   CIFAR10=<cifar10 name or class-per-folder tree>  (default: cifar10)
#   OUT=<directory for the JSON reports>  (default: bench-results)
#   PROTOCOL="full" runs the paper's protocol everywhere (5 nets x 1000 epochs; hours on a
#   GPU, days on a CPU); the default "cpu" shortens the larger runs and says so in each JSON.
set -euo pipefail
HABA=${HABA:-target/release/haba}
FMNIST=${FMNIST:-fashion-mnist}
CIFAR10=${CIFAR10:-cifar10}
OUT=${OUT:-bench-results}
PROTOCOL=${PROTOCOL:-cpu}
mkdir -p "$OUT"

run() { # name dataset args...
  local name=$1 dataset=$2; shift 2
  echo "== $name" >&2
  "$HABA" eval --dataset "$dataset" --json "$OUT/$name.json" "$@" 2>&1 | grep -v '^error: XDG' | tail -1
}

for ds in fmnist:"$FMNIST" cifar10:"$CIFAR10"; do
  tag=${ds%%:*}; path=${ds#*:}
  if [ "$PROTOCOL" = full ]; then
    for ipc in 1 10 50; do run "$tag-random-$ipc" "$path" --random-real $ipc; done
    run "$tag-whole" "$path" --whole --epochs 50 --nets 1
  else
    run "$tag-random-1" "$path" --random-real 1
    run "$tag-random-10" "$path" --random-real 10 --nets 3 --epochs 300
    run "$tag-random-50" "$path" --random-real 50 --nets 1 --epochs 150
  fi
done
[ "$PROTOCOL" = full ] || run fmnist-whole "$FMNIST" --whole --epochs 2 --nets 1
