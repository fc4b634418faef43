#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo fuzz) of every reader of files haba
# opens: IDX, CIFAR, SVHN's MAT files, image folders, artifacts, checkpoints and TOML
# configs. Each target runs SECONDS_PER_TARGET seconds from seeds of every valid layout; what it
# finds lands in fuzz/artifacts/<target>/; the table at the end gives each target's runs.
#
#   cargo install cargo-fuzz && rustup toolchain install nightly   # once
#   SECONDS_PER_TARGET=300 scripts/fuzz.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-300}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(idx cifar svhn image_folder artifact checkpoint config)
CORPUS=fuzz/corpus
# Instrumented builds of their own, outside the clone.
export CARGO_TARGET_DIR=${HABA_FUZZ_TARGET_DIR:-$HOME/.cache/haba/target-fuzz}

# A real run's artifact, checkpoint and config are the seeds of their readers.
seed_run=$(mktemp -d)
trap 'rm -rf "$seed_run"' EXIT
CARGO_TARGET_DIR=${HABA_TARGET_DIR:-$HOME/.cache/haba/target} cargo run --release --quiet -- \
  distill --preset quick --iterations 2 --checkpoint-every 1 --eval-nets 1 --eval-epochs 1 \
  --device cpu --out "$seed_run/run" >/dev/null
python3 fuzz/seeds.py "$CORPUS" --artifact "$seed_run/run/distilled.safetensors" \
  --checkpoint "$seed_run/run/checkpoint.safetensors" --config "$seed_run/run/config.toml"

# No sanitizer: the readers are safe Rust, and what is looked for is a panic, an abort
# (allocation failure), a hang or memory past the limit.
cargo +nightly fuzz build --release --sanitizer none --fuzz-dir fuzz

table="| target | runs | seconds | corpus | found |\n|---|---|---|---|---|"
status=0
for target in "${TARGETS[@]}"; do
  log=$(mktemp)
  if ! cargo +nightly fuzz run --release --sanitizer none --fuzz-dir fuzz "$target" \
      "$CORPUS/$target" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 \
      -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  units=$(ls "$CORPUS/$target" | wc -l)
  found=$(ls "fuzz/artifacts/$target" 2>/dev/null | wc -l)
  row="| $target | $runs | $SECONDS_PER_TARGET | $units | $found |"
  echo "$row"
  table="$table\n$row"
  [ "$found" = 0 ] || tail -40 "$log"
  rm -f "$log"
done
echo -e "\n$table"
exit $status
