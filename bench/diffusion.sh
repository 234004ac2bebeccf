#!/usr/bin/env bash
# Diffusion on Fashion-MNIST: ours beside diffusers, the same budget of process CPU time, one thread each.
#   [DTYPE=float32] bash bench/diffusion.sh [MINUTES=15] [IMAGES=1000]
# DTYPE (default bfloat16, the recipe's) sets both trainers' autocast: use float32 on a CPU without
# AVX-512 BF16 or AMX, where bfloat16 products run at a few percent of float32's speed (an attempt at
# 60 minutes in bfloat16 on such a 2-core AVX2 machine reached 62 steps).
# Trains configs/fashion-ddpm.toml (train.time_limit = "cpu") and diffusers' UNet2DModel of the same
# parameter count on the same batches (bench/diffusion.py train-diffusers) side by side, then samples
# both with DDIM 20 steps (trailing, guidance 3) and scores them in the shipped classifier's features.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-15}
N=${2:-1000}
mkdir -p runs bench/results
rm -rf "runs/bench-ddpm-${M}cpumin" "runs/bench-diffusers-${M}cpumin"
.venv/bin/aigc train configs/fashion-ddpm.toml --train.out_dir="runs/bench-ddpm-${M}cpumin" \
  --train.max_minutes="$M" --train.time_limit=cpu --train.threads=1 --train.dtype="${DTYPE:-bfloat16}" --quiet > "runs/bench-ddpm-${M}cpumin.log" 2>&1 &
.venv/bin/python bench/diffusion.py train-diffusers --cpu-minutes "$M" --threads 1 --dtype "${DTYPE:-bfloat16}" \
  --out "runs/bench-diffusers-${M}cpumin" > "runs/bench-diffusers-${M}cpumin.log" 2>&1 &
wait
.venv/bin/python bench/diffusion.py score --ours "runs/bench-ddpm-${M}cpumin" --diffusers "runs/bench-diffusers-${M}cpumin" \
  --images "$N" --json "bench/results/diffusion-${M}cpumin.json"
.venv/bin/aigc sample "runs/bench-ddpm-${M}cpumin" --n 100 --seed 0 --out "bench/results/ddpm-${M}cpumin.png"
