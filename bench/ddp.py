"""Data parallelism on CPU: one process against two torchrun ranks (gloo) at the same global batch.

Trains configs/tang-poems-gpt.toml for 50 steps (global batch 16, logged every step) as one process
with 2 threads and as 2 ranks with 1 thread each, alternating the two over ``--rounds`` rounds;
prints the largest step-by-step difference of the training losses and the median tokens/s of
each. Usage: python bench/ddp.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--quiet", "--train.max_steps=50", "--train.max_minutes=0", "--train.log_interval=1",
         "--train.eval_interval=1000", "--train.checkpoint_interval=1000", "--train.warmup_steps=10"]


def run(kind: str, out: Path, lr: float) -> list[dict]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cfg = str(ROOT / "configs" / "tang-poems-gpt.toml")
    if kind == "1 process":
        cmd = [sys.executable, "-m", "aigc", "train", cfg, *FLAGS, "--train.batch_size=16", "--train.threads=2"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aigc",
               "train", cfg, *FLAGS, "--train.global_batch=16", "--train.threads=1"]
    subprocess.run(cmd + [f"--train.out_dir={out}", f"--train.lr={lr}", f"--train.min_lr={lr / 10}"], check=True, cwd=ROOT, env=env, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train_loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=8e-3, help="peak learning rate (the recipe's: 8e-3)")
    args = parser.parse_args()
    speeds: dict[str, list[float]] = {"1 process": [], "2 ranks": []}
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in speeds:  # alternate
                out = Path(tmp) / f"{kind.replace(' ', '-')}-{r}"
                rows = run(kind, out, args.lr)
                curves[kind] = [row["train_loss"] for row in rows]
                speeds[kind].append(statistics.median(row["tokens_per_s"] for row in rows[5:]))
                shutil.rmtree(out)
    diffs = [abs(a - b) for a, b in zip(curves["1 process"], curves["2 ranks"])]
    diff = max(diffs)
    print("|difference| at steps 1, 10, 20, 30, 40, 50: " + ", ".join(f"{diffs[i]:.1e}" for i in (0, 9, 19, 29, 39, 49)))
    print(f"steps compared: {len(curves['1 process'])}; largest |loss(1 process) - loss(2 ranks)|: {diff:.2e}")
    print(f"loss at step 1 / 50: {curves['1 process'][0]:.4f} / {curves['1 process'][-1]:.4f} (1 process), "
          f"{curves['2 ranks'][0]:.4f} / {curves['2 ranks'][-1]:.4f} (2 ranks)")
    for kind, s in speeds.items():
        print(f"{kind}: {statistics.median(s):,.0f} tokens/s (range {min(s):,.0f}-{max(s):,.0f}, {len(s)} rounds)")


if __name__ == "__main__":
    main()
