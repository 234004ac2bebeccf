"""Build the shipped text-to-image model ``color-fashion-t2i`` (aigc/models/builtin/color-fashion-t2i/).

    python scripts/build_t2i.py                  # train (configs/color-fashion-t2i.toml), then package
    python scripts/build_t2i.py train            # only the training run (resumable: run it again to go on)
    python scripts/build_t2i.py package [--run RUN]

The run trains the recipe on ``color-fashion`` (Fashion-MNIST from Debian's dataset-fashion-mnist,
painted and captioned by aigc.data.captions). Packaging keeps what sampling needs: the EMA weights,
stored as the model's only weights in float16 (the folder's config has ``ema_decay = 0``), the
caption tokenizer, the sampler defaults, and a metrics.json naming the run, its last evaluation, the
git commit and the held-out colour x garment pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPE = REPO / "configs" / "color-fashion-t2i.toml"
MODEL_OUT = REPO / "aigc" / "models" / "builtin" / "color-fashion-t2i"
RUN = REPO / "runs" / "color-fashion-t2i"


def train(run: Path) -> None:
    cmd = [sys.executable, "-m", "aigc", "train", str(RECIPE), f"--train.out_dir={run}"]
    if (run / "checkpoints").is_dir():
        cmd.append("--resume")
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=REPO)


def package(run: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from aigc.atomic import atomic_dir, write_json
    from aigc.data.captions import COLORS, GARMENTS, HELD_OUT
    from aigc.folders import latest_checkpoint
    from aigc.formats.model_folder import load_model_folder

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        sys.exit(f"error: {run} has no checkpoint; run the train stage first")
    model = load_model_folder(ckpt)
    if model.family != "ddpm" or model.config.conditioning != "text":
        sys.exit(f"error: {ckpt} is not a text-to-image diffusion model")
    weights = model.sampler_net.state_dict()  # the EMA: what sampling uses
    state = {f"net.{k}": v.to(torch.float16).contiguous() for k, v in weights.items()}
    state["ema_updates"] = model.ema_updates.clone()
    config = {"family": "ddpm", **dataclasses.asdict(model.config), "ema_decay": 0.0}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    evals = [r for r in rows if "val_loss" in r]
    run_info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    with atomic_dir(MODEL_OUT) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "family": "ddpm"})
        write_json(tmp / "config.json", config)
        (tmp / "tokenizer.json").write_bytes((ckpt / "tokenizer.json").read_bytes())
        (tmp / "generation_config.json").write_bytes((ckpt / "generation_config.json").read_bytes())
        write_json(tmp / "metrics.json", {
            "run": str(run), "checkpoint": ckpt.name, "final_eval": evals[-1] if evals else None,
            "git_commit": run_info.get("git_commit"), "recipe": "configs/color-fashion-t2i.toml",
            "weights": f"the EMA weights (decay {model.config.ema_decay}), float16",
            "data": "color-fashion: Fashion-MNIST (Xiao et al. 2017, MIT licence) painted in 8 colours, captioned "
                    "in English and Chinese (aigc.data.captions)",
            "held_out_pairs": [f"{COLORS[c][0]} {GARMENTS[k][0]}" for c, k in HELD_OUT]})
    print(f"wrote {MODEL_OUT} ({(MODEL_OUT / 'model.safetensors').stat().st_size / 1e6:.1f} MB weights)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", nargs="?", choices=["train", "package"], help="one stage (default: both)")
    ap.add_argument("--run", type=Path, default=RUN, help=f"the training run (default: {RUN.relative_to(REPO)})")
    args = ap.parse_args()
    if args.stage in (None, "train"):
        train(args.run)
    if args.stage in (None, "package"):
        package(args.run)


if __name__ == "__main__":
    main()
