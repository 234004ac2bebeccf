"""loss.png: train and val loss against optimizer steps, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from aigc.atomic import atomic_path


def plot_losses(metrics_path: Path, out_path: Path, title: str = "") -> None:
    """Draw train loss (every logged step) and val loss (every evaluation) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "train_loss" in row and "val_loss" not in row:
            train.append((row["step"], row["train_loss"]))
        if "val_loss" in row:
            val.append((row["step"], row["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="val", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
