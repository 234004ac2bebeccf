"""Training speed and quality side by side: aigc against nanoGPT at nanoGPT's baby-GPT shape.

Both train the same model (4 layers, 4 heads, d_model 128, block 64, batch 12; LayerNorm without
biases, learned positions, GELU (aigc's tanh approximation as in GPT-2, nanoGPT's exact erf form),
tied embeddings, no dropout; AdamW lr 1e-3 -> 1e-4 cosine after
100 warmup steps, beta2 0.99, weight decay 0.1, clip 1.0) on the same token shards: aigc prepares
the tang-poems dataset with its character tokenizer, and nanoGPT reads that train.bin / val.bin
(the same uint16 memmap format it uses). nanoGPT comes from a local checkout (``--nanogpt DIR``,
e.g. a clone of github.com/karpathy/nanoGPT); nothing of it is copied here.

Variants: nanoGPT eager and ``compile=True`` (nanoGPT has no bfloat16 on CPU: its autocast is a
no-op there), aigc eager and ``train.compile``, each in float32, and aigc with
``train.dtype = "bfloat16"``. Phase 1 (speed): ``--rounds`` rounds, each running every variant
once for ``--speed-iters`` iterations, the variants alternating; ms/iter is the median of each
run's per-iteration times after the first ``--skip`` (compile and warm-up). Phase 2 (quality): one
``--iters``-iteration run of each variant in ``--quality`` with val loss every ``--eval-every``
iterations over ``--eval-iters`` batches; the time to reach nanoGPT's final val loss is the
iterations needed times that variant's median ms/iter from phase 1 (evaluation time excluded).

Usage: python bench/train_nanogpt.py --nanogpt /path/to/nanoGPT [--rounds 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle  # only to write nanoGPT's meta.pkl (its format); aigc never reads a pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, BLOCK = 12, 64

AIGC_TOML = """[data]
dataset = "tang-poems"
tokenizer = "char"
prepared_dir = "{prepared}"
[model]
family = "gpt"
block_size = 64
n_layer = 4
n_head = 4
d_model = 128
dropout = 0.0
bias = false
norm = "layernorm"
positions = "learned"
mlp = "gelu"
tie_embeddings = true
[train]
out_dir = "{out}"
threads = {threads}
device = "{device}"
batch_size = 12
lr = 1e-3
min_lr = 1e-4
warmup_steps = 100
beta2 = 0.99
weight_decay = 0.1
grad_clip = 1.0
keep_checkpoints = 1
"""


def aigc_run(tmp: Path, name: str, iters: int, eval_every: int, eval_iters: int, args, **train) -> dict:
    """Train with aigc; returns per-window ms/iter and the val losses by step."""
    out = tmp / f"aigc-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = tmp / "aigc.toml"
    cfg.write_text(AIGC_TOML.format(prepared=tmp / "prepared", out=out, threads=args.threads, device=args.device))
    flags = [f"--train.max_steps={iters}", "--train.max_minutes=0", "--train.log_interval=10",
             f"--train.eval_interval={eval_every}", f"--train.eval_batches={eval_iters}",
             f"--train.checkpoint_interval={iters}", *(f"--train.{k}={v}" for k, v in train.items())]
    subprocess.run([sys.executable, "-m", "aigc", "train", str(cfg), "--quiet", *flags], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ms = [1000 * BATCH * BLOCK / r["tokens_per_s"] for r in rows
          if "tokens_per_s" in r and r["step"] > args.skip and (r["step"] - 10) % eval_every != 0]
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    shutil.rmtree(out)
    return {"ms": ms, "val": val}


def nanogpt_run(tmp: Path, iters: int, eval_every: int, eval_iters: int, args, compile_: bool) -> dict:
    """Train with nanoGPT's train.py (run in a copy of its checkout); returns per-iteration ms and val losses."""
    work = tmp / "nanogpt"
    flags = ["--dataset=tang", "--out_dir=" + str(tmp / "nanogpt-out"), f"--max_iters={iters}",
             f"--lr_decay_iters={iters}", f"--eval_interval={eval_every}", f"--eval_iters={eval_iters}",
             "--log_interval=1", "--always_save_checkpoint=False", f"--batch_size={BATCH}", f"--block_size={BLOCK}",
             "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0", "--bias=False", "--learning_rate=1e-3",
             "--min_lr=1e-4", "--warmup_iters=100", "--beta2=0.99", "--weight_decay=0.1", "--grad_clip=1.0",
             "--gradient_accumulation_steps=1", f"--device={args.device}", "--dtype=float32",
             f"--compile={compile_}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "train.py", *flags], check=True, cwd=work, env=env, capture_output=True,
                       text=True)
    ms, val = [], {}
    for line in r.stdout.splitlines():
        if m := re.match(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", line):
            it = int(m.group(1))
            if it >= args.skip and it % eval_every != 0:
                ms.append(float(m.group(2)))
        elif m := re.match(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", line):
            val[int(m.group(1))] = float(m.group(2))
    shutil.rmtree(tmp / "nanogpt-out", ignore_errors=True)
    return {"ms": ms, "val": val}


def prepare(tmp: Path, args) -> None:
    """Prepare tang-poems with aigc (one training step) and give nanoGPT the same shards."""
    aigc_run(tmp, "prepare", 1, 1, 1, args)
    meta = json.loads((tmp / "prepared" / "meta.json").read_text())
    work = tmp / "nanogpt"
    shutil.copytree(args.nanogpt, work, ignore=shutil.ignore_patterns(".git", "assets", "*.ipynb"))
    data = work / "data" / "tang"
    data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        os.symlink(tmp / "prepared" / f"{split}.bin", data / f"{split}.bin")
    with open(data / "meta.pkl", "wb") as f:  # nanoGPT reads the vocabulary size from here
        pickle.dump({"vocab_size": meta["vocab_size"]}, f)


VARIANTS = {
    "nanoGPT eager": lambda tmp, n, e, k, a: nanogpt_run(tmp, n, e, k, a, False),
    "nanoGPT compile": lambda tmp, n, e, k, a: nanogpt_run(tmp, n, e, k, a, True),
    "aigc eager": lambda tmp, n, e, k, a: aigc_run(tmp, "eager", n, e, k, a),
    "aigc compile": lambda tmp, n, e, k, a: aigc_run(tmp, "compile", n, e, k, a, compile="true"),
    "aigc bf16 eager": lambda tmp, n, e, k, a: aigc_run(tmp, "bf16", n, e, k, a, dtype="bfloat16"),
    "aigc bf16 compile": lambda tmp, n, e, k, a: aigc_run(tmp, "bf16c", n, e, k, a, dtype="bfloat16", compile="true"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (train.py, model.py)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--quality", nargs="*", default=["nanoGPT eager", "aigc eager"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-iters", type=int, default=300)
    parser.add_argument("--skip", type=int, default=50, help="iterations left out of the timing (compile, warm-up)")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {"speed": {v: [] for v in args.variants}, "quality": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prepare(tmp, args)
        for r in range(args.rounds):
            for v in args.variants:  # alternating
                run = VARIANTS[v](tmp, args.speed_iters, args.speed_iters, 1, args)
                result["speed"][v].append(statistics.median(run["ms"]))
                print(f"round {r + 1} {v:18} {result['speed'][v][-1]:7.1f} ms/iter", flush=True)
        for v in args.quality:
            result["quality"][v] = VARIANTS[v](tmp, args.iters, args.eval_every, args.eval_iters, args)["val"]
            print(f"{v:18} val loss by iteration: {result['quality'][v]}", flush=True)
    report(result, args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


def report(result: dict, args) -> None:
    speed = {v: statistics.median(ms) for v, ms in result["speed"].items()}
    base = speed.get("nanoGPT eager")
    target = result["quality"].get("nanoGPT eager", {}).get(args.iters)
    print("\n| variant | ms/iter (median, range) | tokens/s | vs nanoGPT eager |")
    print("|---|---|---|---|")
    for v, ms in result["speed"].items():
        rel = f"{base / speed[v]:.2f}x" if base else "-"
        print(f"| {v} | {speed[v]:.1f} ({min(ms):.1f}-{max(ms):.1f}) | {BATCH * BLOCK * 1000 / speed[v]:,.0f} | {rel} |")
    if target is None:
        return
    print(f"\nnanoGPT's val loss at {args.iters} iterations: {target:.4f}")
    print("| variant | val loss at its evaluations | first iteration at or below the target | train time to it (s) |")
    print("|---|---|---|---|")
    for v, val in result["quality"].items():
        hit = next((it for it, loss in sorted(val.items()) if it > 0 and loss <= target), None)
        when = f"{hit * speed[v] / 1000:.0f}" if hit is not None and v in speed else "-"
        losses = ", ".join(f"{it}: {loss:.4f}" for it, loss in sorted(val.items()))
        print(f"| {v} | {losses} | {hit if hit is not None else 'not reached'} | {when} |")


if __name__ == "__main__":
    main()
