#!/usr/bin/env bash
# Code model bench: the python-code recipe trained for 120 and 30 CPU minutes (side by side: 2 threads and
# 1 thread, budgets counted in process CPU time), then syntax validity and pass@1/pass@10 on HumanEval and on
# our 20 functions (10 samples per problem, temperature 0.6, top-p 0.95, 128 new tokens, code stops), and the
# tokenizer's compression. Results: runs/bench-code-*/eval-*.json; the table in bench/RESULTS.md.
# Usage: bash bench/code.sh
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/aigc
export OMP_WAIT_POLICY=PASSIVE  # idle OpenMP threads sleep instead of spinning on a shared machine
$A prepare configs/python-code.toml --quiet
$A train configs/python-code.toml --train.out_dir=runs/bench-code-120cpumin --train.max_minutes=120 \
    --train.time_limit=cpu --train.threads=2 --quiet > runs/bench-code-120cpumin.log 2>&1 &
$A train configs/python-code.toml --train.out_dir=runs/bench-code-30cpumin --train.max_minutes=30 \
    --train.time_limit=cpu --train.threads=1 --quiet > runs/bench-code-30cpumin.log 2>&1 &
wait
for run in runs/bench-code-30cpumin runs/bench-code-120cpumin; do
    $A eval "$run" --max-tokens 0 --samples 20 --max-new-tokens 128 --quiet
    for task in functions humaneval; do
        $A eval "$run" --task "$task" --n 10 --k 1 10 --max-new-tokens 128 --temperature 0.6 --top-p 0.95 --quiet
    done
done
.venv/bin/python bench/code_tokenizer.py > bench/results/code_tokenizer.json
