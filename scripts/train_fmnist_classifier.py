"""Train the Fashion-MNIST classifier whose features the image metrics use, and ship it.

    python scripts/train_fmnist_classifier.py [--epochs 8] [--threads 2]

Writes aigc/evaluate/fmnist-classifier/{model.safetensors, info.json} (test accuracy,
parameter count, command, seed). Trained on the 60k train images (light random
shifts), tested on the 10k test images. Same seed, same CPU -> same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from aigc.atomic import atomic_path, write_json
from aigc.data.images import FASHION_MNIST_DIR, read_idx_folder, to_signed
from aigc.evaluate.classifier import SHIPPED, FmnistClassifier


def shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translations by up to ``pad`` pixels (zero = background after padding with -1)."""
    b = x.shape[0]
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    return out


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    correct = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    model.train()
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(FASHION_MNIST_DIR))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = read_idx_folder(Path(args.data))
    xtr, ytr = to_signed(torch.from_numpy(splits["train"][0].copy())[:, None]), torch.from_numpy(splits["train"][1])
    xte, yte = to_signed(torch.from_numpy(splits["test"][0].copy())[:, None]), torch.from_numpy(splits["test"][1])
    model = FmnistClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    bar = tqdm(total=total, desc="classifier", unit="step", file=sys.stderr)
    step = 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x = shift(xtr[idx], gen)
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(x), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.write(f"epoch {epoch + 1}: test accuracy {accuracy(model, xte, yte):.4f}")
    bar.close()
    model.eval()
    acc = accuracy(model, xte, yte)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(SHIPPED / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(SHIPPED / "info.json", {
        "name": "fmnist-classifier", "test_accuracy": acc, "test_images": len(xte),
        "parameters": sum(p.numel() for p in model.parameters()), "feature_dim": 128,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_minutes": round((time.time() - t0) / 60, 1), "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv), "data": "Fashion-MNIST train (60k) / t10k (10k)"})
    print(json.dumps({"test_accuracy": acc}))


if __name__ == "__main__":
    main()
