"""Diffusion on Fashion-MNIST: ours (configs/fashion-ddpm.toml) beside diffusers' UNet2DModel + DDPMScheduler.

    python bench/diffusion.py train-diffusers --cpu-minutes 15 --out runs/bench-diffusers-15cpumin
    python bench/diffusion.py score --ours RUN_OR_CHECKPOINT --diffusers FOLDER --images 1000 --json OUT.json

``train-diffusers`` trains diffusers' UNet2DModel with the same widths (48, 96, 96), blocks, group
norm (8 groups), attention at 7x7 and class embedding (10 classes + a null class) as our recipe,
which gives the same parameter count (3,645,697), on the same batches (drawn from our prepared
Fashion-MNIST with our seeded generators, so both see the same images in the same order), with the
same AdamW (lr 5e-4, warmup 100 steps, cosine to 5e-5 over the CPU-time budget), bf16 autocast
(``--dtype float32`` turns it off, as ``DTYPE=float32`` does for both in diffusion.sh),
gradient clipping 1.0, condition dropout 0.1 and an EMA with the same warm-up (diffusers' EMAModel
decay ``min(0.999, (1 + n) / (10 + n))``), for a budget of process CPU time, one thread. It saves
the EMA weights with ``save_pretrained`` (safetensors).

``score`` samples both models with DDIM (trailing spacing, 20 steps, guidance 3; diffusers' own
DDIMScheduler for theirs, ours for ours) and scores them in the shipped classifier's features
against the test images (``aigc.evaluate.images``: FD, KID, precision/recall, class accuracy).
Nothing here is imported by aigc; diffusers is needed only for this bench (``pip install diffusers``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aigc.config import load_config  # noqa: E402
from aigc.data.prepared import ensure_prepared  # noqa: E402

RECIPE = ROOT / "configs" / "fashion-ddpm.toml"


def diffusers_unet():
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(48, 96, 96), norm_num_groups=8, num_class_embeds=11,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=24,
                       dropout=0.1)


def lr_at(step: int, cpu_fraction: float, t) -> float:
    """Our loop's schedule: linear warm-up, then cosine from lr to min_lr over the budget's fraction spent."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(cpu_fraction, 1.0)))


def train_diffusers(args) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    torch.set_num_threads(args.threads)
    cfg = load_config(RECIPE)
    t = cfg.train
    data = ensure_prepared(cfg, True)
    unet = diffusers_unet()
    print(f"diffusers UNet2DModel: {sum(p.numel() for p in unet.parameters()):,} parameters", flush=True)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.AdamW(unet.parameters(), lr=t.lr, weight_decay=0.0, betas=(t.beta1, t.beta2))
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=False)
    budget, start, step = args.cpu_minutes * 60, time.process_time(), 0
    while time.process_time() - start < budget:
        gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step)  # our loop's batch generator of this step
        x, y = data.batch("train", t.batch_size, gen)
        noise = torch.randn(x.shape, generator=gen)
        ts = torch.randint(0, 1000, (len(x),), generator=gen)
        drop = torch.rand(len(x), generator=gen) < 0.1
        y = torch.where(drop, torch.full_like(y, 10), y)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, (time.process_time() - start) / budget, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            out = unet(sched.add_noise(x, noise, ts), ts, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} cpu {(time.process_time() - start) / 60:.1f} min", flush=True)
    ema.copy_to(unet.parameters())
    out = Path(args.out)
    unet.save_pretrained(out)
    (out / "bench.json").write_text(json.dumps({"steps": step, "cpu_s": time.process_time() - start,
                                                "images": step * t.batch_size}))
    print(f"saved {out}: {step} steps", flush=True)


@torch.no_grad()
def sample_diffusers(folder: Path, labels: torch.Tensor, seeds: list[int], steps: int, scale: float):
    from diffusers import DDIMScheduler, UNet2DModel
    unet = UNet2DModel.from_pretrained(folder).eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          timestep_spacing="trailing", clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    x = torch.stack([torch.randn((1, 28, 28), generator=torch.Generator().manual_seed(s)) for s in seeds])
    null = torch.full_like(labels, 10)
    for t in sched.timesteps:
        both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        c, u = both.chunk(2)
        x = sched.step(u + scale * (c - u), t, x).prev_sample
    return x.clamp(-1, 1)


def score(args) -> None:
    import aigc
    from aigc.evaluate.classifier import classify
    from aigc.evaluate.images import all_metrics
    from aigc.generate.images import sample_diffusion
    torch.set_num_threads(args.threads)
    cfg = load_config(RECIPE)
    data = ensure_prepared(cfg, False)
    n = args.images
    gen = torch.Generator().manual_seed(0)
    real_x, _ = data.tensors("val", torch.randperm(len(data.images["val"]), generator=gen)[:n].numpy())
    real_f, _ = classify(real_x)
    labels = torch.arange(n) % 10
    rows = {}
    for name, folder in (("ours", args.ours), ("diffusers", args.diffusers)):
        if not folder:
            continue
        t0 = time.time()
        fakes = []
        if name == "ours":
            model = aigc.load(folder)
            settings = model.settings(sampler="ddim", steps=args.steps, guidance_scale=args.guidance, eta=0.0,
                                      spacing="trailing")
        for i in range(0, n, 250):
            seeds, chunk = list(range(i, min(i + 250, n))), labels[i:i + 250]
            if name == "ours":
                fakes.append(sample_diffusion(model.model, settings, seeds, chunk))
            else:
                fakes.append(sample_diffusers(Path(folder), chunk, seeds, args.steps, args.guidance))
            print(f"{name}: {i + len(seeds)}/{n} images", flush=True)
        seconds = time.time() - t0
        fake_f, pred = classify(torch.cat(fakes))
        row = all_metrics(real_f, fake_f)
        row["class_accuracy"] = (pred == labels).double().mean().item()
        row["images_per_s"] = n / seconds
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    Path(args.json).write_text(json.dumps({"images": n, "steps": args.steps, "guidance": args.guidance,
                                           "sampler": "ddim trailing eta 0", "rows": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train-diffusers")
    tr.add_argument("--cpu-minutes", type=float, default=15)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--out", required=True)
    tr.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="autocast as the recipe's train.dtype; float32 where the CPU lacks AVX-512 BF16 / AMX")
    sc = sub.add_parser("score")
    sc.add_argument("--ours")
    sc.add_argument("--diffusers")
    sc.add_argument("--images", type=int, default=1000)
    sc.add_argument("--steps", type=int, default=20)
    sc.add_argument("--guidance", type=float, default=3.0)
    sc.add_argument("--threads", type=int, default=2)
    sc.add_argument("--json", required=True)
    args = ap.parse_args()
    train_diffusers(args) if args.cmd == "train-diffusers" else score(args)


if __name__ == "__main__":
    main()
