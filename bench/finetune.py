#!/usr/bin/env python3
"""Pretrained -> fine-tuned, measured: tang-base, full fine-tuning, LoRA and from scratch on Xin Qiji's ci.

Every row is scored by ``aigc eval`` on the same held-out 10% of the style set
(``configs/xin-qiji-finetune.toml``: dataset xin-qiji-ci, val_fraction 0.1, split seed
1234, tang-base's tokenizer), which tang-base never saw in pretraining:

- ``tang-base``: the shipped base model as it is;
- ``full``: every weight fine-tuned for the recipe's steps (60), at most MINUTES of wall time;
- ``lora``: LoRA rank 8, alpha 16, on all seven linear layers of each block, the same;
- ``scratch``: tang-base's architecture from random weights on the style set alone, the same.

Each training runs alone as its own process (``/usr/bin/time -f %M`` gives its peak
resident memory) with both cores. Writes ``bench/results/finetune.json`` and prints a
Markdown table for bench/RESULTS.md.

Run: ``python bench/finetune.py --minutes 2``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AIGC = [sys.executable, "-m", "aigc"]
CONFIG = REPO / "configs" / "xin-qiji-finetune.toml"
ALL_LINEAR = '["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]'


def run(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB)."""
    start = time.time()
    proc = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    peak = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KB ")]
    return wall, int(peak[-1].split()[1]) // 1024


def evaluate(model: str, out: Path) -> dict:
    subprocess.run([*AIGC, "eval", model, "--config", str(CONFIG), "--samples", "1", "--max-new-tokens", "1",
                    "--out", str(out), "--quiet"], cwd=REPO, check=True, capture_output=True)
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="wall time of each training (default: 2)")
    ap.add_argument("--runs", default="runs/bench-finetune", help="folder for the runs")
    args = ap.parse_args()
    runs = REPO / args.runs
    runs.mkdir(parents=True, exist_ok=True)
    base_cfg = json.loads((REPO / "aigc" / "models" / "builtin" / "tang-base" / "config.json").read_text())
    arch = [f"--model.{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in base_cfg.items() if k not in ("family", "vocab_size")]
    common = [f"--train.max_minutes={args.minutes}", "--quiet"]
    variants = {
        "full": ["--train.lr=5e-4"],
        "lora": ["--lora-rank", "8", "--train.lora_alpha=16", f"--train.lora_targets={ALL_LINEAR}",
                 "--train.lr=2e-3"],
        "scratch": ["--train.init_from=", "--data.tokenizer=tang-base", *arch, "--train.lr=3e-3",
                    "--train.warmup_steps=20"],
    }
    rows = {"tang-base": {**evaluate("tang-base", runs / "eval-tang-base.json"), "wall_s": 0.0}}
    for name, extra in variants.items():
        out = runs / name
        if out.exists():
            sys.exit(f"{out} exists; remove it or pass another --runs")
        wall, peak = run([*AIGC, "train", str(CONFIG), f"--train.out_dir={out}", *common, *extra])
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = max(r["step"] for r in metrics)
        rows[name] = {**evaluate(str(out), runs / f"eval-{name}.json"), "wall_s": wall, "peak_rss_mib": peak,
                      "steps": steps, "parameters": info.get("parameters"),
                      "trainable_parameters": info.get("trainable_parameters")}
        print(name, rows[name], file=sys.stderr)
    result = {"date": time.strftime("%Y-%m-%d"), "minutes": args.minutes, "command": " ".join(sys.argv),
              "rows": rows}
    out = REPO / "bench" / "results" / "finetune.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("| model | training | steps | trainable parameters | peak RSS | val loss (nats/char) | val perplexity |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        trainable = f"{r['trainable_parameters']:,}" if r.get("trainable_parameters") else "–"
        peak = f"{r['peak_rss_mib']:,} MiB" if r.get("peak_rss_mib") else "–"
        print(f"| {name} | {r['wall_s'] / 60:.1f} min | {r.get('steps', '–')} | {trainable} | {peak} | "
              f"{r['val_loss']:.3f} | {r['val_perplexity']:.1f} |")


if __name__ == "__main__":
    main()
