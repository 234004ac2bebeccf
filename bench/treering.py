"""Tree-Ring on a class-conditional DDPM: detection and false positives, after attacks, and its FD cost.

    python bench/treering.py --model runs/bench-ddpm-60cpumin [--n 1000] [--invert-steps 20]
        [--json bench/results/treering.json]

``--n`` watermarked and ``--n`` plain images with the same seeds and classes (classes in turn),
the model's own sampling settings (DDIM, its steps and guidance), a fixed key (a benchmark, not a
secret) with radius 4. Every image goes through 8-bit pixels first (what a PNG holds), then one
of: nothing; JPEG at quality 75; resizing to twice the size and back (bilinear); Gaussian noise
of standard deviation 0.1 on the [0, 1] scale (Wen et al. 2023's attacks, section 4). Detection:
DDIM inversion with ``--invert-steps`` steps, the matched-filter z-score, z >= 4. FD cost: FD and
class accuracy in the shipped classifier's features against ``--n`` Fashion-MNIST val images,
watermarked and plain.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aigc  # noqa: E402
from aigc.atomic import write_json  # noqa: E402
from aigc.config import load_config  # noqa: E402
from aigc.data.images import to_uint8  # noqa: E402
from aigc.data.prepared import ensure_prepared  # noqa: E402
from aigc.evaluate.classifier import classify  # noqa: E402
from aigc.evaluate.images import frechet_distance_features  # noqa: E402
from aigc.evaluate.treering import detect_images  # noqa: E402
from aigc.generate.treering import TreeRingKey  # noqa: E402

BATCH = 100


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] through 8-bit pixels and back."""
    return to_uint8(x).float() / 127.5 - 1


def attack(name: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One attack on 8-bit images ``(B, 1, S, S)`` in [-1, 1]."""
    if name == "none":
        return x
    if name == "noise":
        return pixels((x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(-1, 1))  # 0.1 on [0, 1]
    out = []
    for img in to_uint8(x).numpy()[:, 0]:
        im = Image.fromarray(img, "L")
        if name == "jpeg75":
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=75)
            im = Image.open(io.BytesIO(buf.getvalue()))
        else:  # resize x2 and back
            s = im.width
            im = im.resize((2 * s, 2 * s), Image.Resampling.BILINEAR).resize((s, s), Image.Resampling.BILINEAR)
        out.append(np.asarray(im, dtype=np.float32) / 127.5 - 1)
    return torch.from_numpy(np.stack(out))[:, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/bench-ddpm-60cpumin")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--invert-steps", type=int, default=20)
    p.add_argument("--radius", type=int, default=4)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--attacks", default="none,jpeg75,resize2x,noise")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="bench/results/treering.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    m = aigc.load(args.model)
    cfg = m.model.config
    key = TreeRingKey("5a" * 32, "treering", args.radius, 0, cfg.image_size, cfg.channels)
    key.validate()
    settings = m.settings(guidance_scale=args.guidance)
    attacks = tuple(args.attacks.split(","))
    z = {(kind, a): [] for kind in ("watermarked", "plain") for a in attacks}
    images = {"watermarked": [], "plain": []}
    data = ensure_prepared(load_config(ROOT / "configs/fashion-ddpm.toml"), False)
    gen = torch.Generator().manual_seed(0)
    real, _ = data.tensors("val", torch.randperm(len(data.images["val"]), generator=gen)[:args.n].numpy())
    real_f, _ = classify(real)
    t0 = time.time()
    for start in tqdm(range(0, args.n, BATCH), desc="batches"):
        n = min(BATCH, args.n - start)
        for kind in ("watermarked", "plain"):
            m.use_watermark(key if kind == "watermarked" else None)
            x, _, _ = m.diffuse(n, seed=start, settings=settings)
            x = pixels(x)
            images[kind].append(x)
            gen = torch.Generator().manual_seed(start)
            for a in attacks:
                z[(kind, a)] += [d.z for d in detect_images(m.model, key, attack(a, x, gen), args.invert_steps)]
        summary = summarize(args, settings, attacks, z, images, real_f, time.time() - t0)
        write_json(args.json, summary)  # after every batch: a stopped run keeps what it measured
    print(json.dumps(summary, indent=1))


def summarize(args, settings, attacks, z, images, real_f, seconds: float) -> dict:
    """The rows of the images done so far (their count is ``n``)."""
    done = len(z[("plain", attacks[0])])
    result = {"model": args.model, "n": done, "radius": args.radius, "invert_steps": args.invert_steps,
              "sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance_scale,
              "seconds": round(seconds), "rows": {}}
    for a in attacks:
        w, pl = z[("watermarked", a)], z[("plain", a)]
        result["rows"][a] = {"tpr": sum(v >= 4 for v in w) / len(w), "fpr": sum(v >= 4 for v in pl) / len(pl),
                             "false_positives": sum(v >= 4 for v in pl), "median_z_watermarked": float(np.median(w)),
                             "median_z_plain": float(np.median(pl)), "max_z_plain": max(pl)}
    labels = torch.arange(done) % 10
    for kind in ("watermarked", "plain"):
        f, pred = classify(torch.cat(images[kind]))
        if done >= 200:
            result[f"fd_{kind}"] = frechet_distance_features(real_f[:max(done, 200)], f)
        result[f"class_accuracy_{kind}"] = float((pred == labels).float().mean())
    return result


if __name__ == "__main__":
    main()
