#!/usr/bin/env bash
# GPT vs LSTM on tang-poems after the same wall time.
#   bash bench/text_lm.sh MINUTES
# Trains configs/tang-poems-{gpt,lstm}.toml side by side for MINUTES of wall time,
# one CPU thread each (two runs on the 2-core machine), with the learning-rate schedule
# following the clock; then scores the whole val split and 20 samples of each
# (aigc eval, 2 threads) and prints the eval JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-5}
AIGC=.venv/bin/aigc
for fam in gpt lstm; do
  rm -rf "runs/bench-$fam-${M}min"
  $AIGC train "configs/tang-poems-$fam.toml" --train.out_dir="runs/bench-$fam-${M}min" \
    --train.max_minutes="$M" --train.max_steps=100000000 --train.threads=1 --quiet \
    > "runs/bench-$fam-${M}min.log" 2>&1 &
done
wait
for fam in gpt lstm; do
  $AIGC eval "runs/bench-$fam-${M}min" --threads 2 --max-new-tokens 128 --quiet
  cat "runs/bench-$fam-${M}min/eval.json"
done
