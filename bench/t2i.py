"""Text-to-image diffusion on color-fashion: the benchmark rows of bench/RESULTS.md.

    python bench/t2i.py table   --model color-fashion-t2i --per-prompt 10 --fd-images 1000
    python bench/t2i.py steps   --model color-fashion-t2i --images 300
    python bench/t2i.py inpaint --model color-fashion-t2i --images 500
    python bench/t2i.py grid    --model color-fashion-t2i     # 8 colours x 10 garments, English and Chinese
    python bench/t2i.py plot                                  # redraw t2i-steps.png from t2i-steps.json

``table``: class and colour accuracy per guidance scale (0, 1, 3, 7) for seen and held-out colour x
garment prompts in English and Chinese, and FD/KID/PR of the garments for val captions
(:func:`aigc.evaluate.t2i.evaluate_text_to_image`, as ``aigc eval`` runs it).
``steps``: FD, KID, class and colour accuracy and images per second for each sampler and step count
(DDPM, DDIM, DPM-Solver++(2M)), prompts from the val captions, guidance 3; a PNG plot.
``inpaint``: val images whose centre half (16x16 of 32x32) is masked, refilled from their own caption,
scored against the real val images beside the masked input left grey.
Every score is in the shipped classifier's features of the garment's intensity; results go to
bench/results/t2i-*.json (and .png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aigc  # noqa: E402
from aigc.atomic import atomic_path, write_text  # noqa: E402
from aigc.config import load_config  # noqa: E402
from aigc.data.captions import garment_gray  # noqa: E402
from aigc.data.prepared import ensure_prepared  # noqa: E402
from aigc.evaluate.classifier import classify  # noqa: E402
from aigc.evaluate.images import all_metrics  # noqa: E402
from aigc.evaluate.t2i import evaluate_text_to_image, sample_prompts, score  # noqa: E402
from aigc.generate.images import sample_diffusion  # noqa: E402

OUT = Path(__import__("os").environ.get("T2I_OUT", ROOT / "bench" / "results"))
SWEEP = [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("dpm++2m", 10), ("dpm++2m", 20)]


def val_prompts(data, n: int, seed: int = 0):
    idx = torch.randperm(len(data.images["val"]), generator=torch.Generator().manual_seed(seed))[:n].numpy()
    real, labels = data.tensors("val", idx)
    return idx, real, labels, [data.captions["val"][i] for i in idx]


def table(args, model, data) -> None:
    res = evaluate_text_to_image(model, data, per_prompt=args.per_prompt, fd_images=args.fd_images)
    write_text(OUT / "t2i-table.json", json.dumps(res, indent=1, ensure_ascii=False))
    print("| guidance | " + " | ".join(f"{c}: class / colour" for c in next(iter(res["cells"].values()))) + " |")
    for g, row in res["cells"].items():
        print(f"| {g} | " + " | ".join(f"{r['class_accuracy']:.3f} / {r['colour_accuracy']:.3f}"
                                      for r in row.values()) + " |")
    print(json.dumps({"fd": res["fd"], "real": res["real"]}))


def steps(args, model, data) -> None:
    idx, real, labels, prompts = val_prompts(data, args.images)
    colours = torch.from_numpy(data.colors["val"][idx])
    real_f, _ = classify(garment_gray(real))
    rows = []
    for name, k in SWEEP:
        if k > model.model.config.timesteps:
            continue
        n = args.images if k <= 100 else args.ddpm1000_images
        start = time.perf_counter()
        fake = sample_prompts(model, model.settings(sampler=name, steps=k, guidance_scale=args.guidance), prompts[:n], 0)
        seconds = time.perf_counter() - start
        fake_f, _ = classify(garment_gray(fake))
        row = {"sampler": name, "steps": k, "images": n, "images_per_s": n / seconds,
               **all_metrics(real_f, fake_f), **score(fake, colours[:n], labels[:n])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_text(OUT / "t2i-steps.json", json.dumps({"guidance": args.guidance, "rows": rows}, indent=1))
    plot(rows, OUT / "t2i-steps.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    n = max(r["images"] for r in rows)  # FD compared at one sample count (its bias depends on it)
    for i, name in enumerate(dict.fromkeys(r["sampler"] for r in rows)):
        rs, colour = [r for r in rows if r["sampler"] == name], f"C{i}"  # one colour per sampler in both panels
        fd = [r for r in rs if r["images"] == n]
        if fd:
            a.plot([r["steps"] for r in fd], [r["fd"] for r in fd], "o-", color=colour, label=name)
        b.plot([r["steps"] for r in rs], [r["images_per_s"] for r in rs], "o-", color=colour, label=name)
    for ax, label in ((a, f"FD, {n} samples each (classifier features)"), (b, "images per second (2 CPU threads)")):
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("color-fashion-t2i: quality and speed against sampler steps (guidance 3)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def inpaint(args, model, data) -> None:
    idx, real, labels, prompts = val_prompts(data, args.images, seed=1)
    colours = torch.from_numpy(data.colors["val"][idx])
    real_f, _ = classify(garment_gray(val_prompts(data, args.images, seed=2)[1]))  # other real images
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1  # the centre half of each side
    grey = real * (1 - mask)  # the masked input, its hole mid-grey (0 in [-1, 1])
    rows = {"masked input left grey": grey}
    settings = model.settings()
    out = []
    for i in range(0, len(prompts), 200):
        part = slice(i, i + 200)
        n = len(prompts[part])
        out.append(sample_diffusion(model.model, settings, list(range(i, i + n)), None,
                                    model.prompt_tokens(prompts[part]), known=real[part],
                                    mask=mask.expand(n, 3, -1, -1)))
    rows["inpainted (regenerated from the caption)"] = torch.cat(out)
    result = {}
    for name, images in rows.items():
        f, _ = classify(garment_gray(images))
        result[name] = {**all_metrics(real_f, f), **score(images, colours, labels)}
        print(name, json.dumps(result[name]), flush=True)
    result["real val images (ceiling)"] = score(real, colours, labels)
    write_text(OUT / "t2i-inpaint.json", json.dumps(result, indent=1))


def grid(args, model, data) -> None:
    """One image per colour x garment (rows: colours, columns: garments), English or Chinese prompts."""
    from aigc.data.captions import COLORS, GARMENTS, caption
    from aigc.generate.images import save_grid

    for lang in ("en", "zh"):
        prompts = [caption(c, k, 0, lang == "zh") for c in range(len(COLORS)) for k in range(len(GARMENTS))]
        images = sample_prompts(model, model.settings(), prompts, 0)
        save_grid(images, OUT / f"t2i-grid-{lang}.png", len(GARMENTS),
                  {"model": args.model, "seed": 0, "parameters": {"prompts": prompts, "layout": "rows: colours, "
                                                                  "columns: garments; image k has seed k"}}, scale=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["table", "steps", "inpaint", "grid", "plot"])
    ap.add_argument("--model", default="color-fashion-t2i")
    ap.add_argument("--per-prompt", type=int, default=10)
    ap.add_argument("--fd-images", type=int, default=1000)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--ddpm1000-images", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.what == "plot":  # redraw t2i-steps.png from t2i-steps.json
        return plot(json.loads((OUT / "t2i-steps.json").read_text())["rows"], OUT / "t2i-steps.png")
    torch.set_num_threads(args.threads)
    model = aigc.load(args.model)
    data = ensure_prepared(load_config(ROOT / "configs" / "color-fashion-t2i.toml"), False)
    {"table": table, "steps": steps, "inpaint": inpaint, "grid": grid}[args.what](args, model, data)


if __name__ == "__main__":
    main()
