#!/usr/bin/env bash
# DCGAN and VAE on Fashion-MNIST after 15 and 60 CPU minutes, and the pythae VAE reference.
#   bash bench/images.sh [MINUTES=60] [SNAPSHOT=15]
# Trains configs/fashion-{dcgan,vae}.toml side by side, one thread each, for MINUTES of
# process CPU time (train.time_limit = "cpu"; the cosine schedule follows it), keeping every
# checkpoint so the one at SNAPSHOT CPU minutes can be scored too. Beside them, pythae trains
# the same VAE for SNAPSHOT CPU minutes (bench/pythae_vae.py). Then every model is scored with
# `aigc eval` (10,000 samples vs the 10,000 test images, fmnist-classifier features) and
# bench/image_table.py writes the rows and the grids under bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-60}
S=${2:-15}
AIGC=.venv/bin/aigc
mkdir -p bench/results
for fam in dcgan vae; do
  rm -rf "runs/bench-$fam-${M}cpumin"
  $AIGC train "configs/fashion-$fam.toml" --train.out_dir="runs/bench-$fam-${M}cpumin" \
    --train.max_minutes="$M" --train.time_limit=cpu --train.max_steps=100000000 --train.threads=1 \
    --train.checkpoint_interval=250 --train.keep_checkpoints=100000 --quiet \
    > "runs/bench-$fam-${M}cpumin.log" 2>&1 &
done
.venv/bin/python bench/pythae_vae.py --cpu-minutes "$S" --threads 1 --out "bench/results/pythae-vae-${S}cpumin.json" \
  --grid "bench/results/pythae-vae-${S}cpumin.png" > "runs/bench-pythae-${S}cpumin.log" 2>&1 &
wait
.venv/bin/python bench/image_table.py --minutes "$M" --snapshot "$S"
