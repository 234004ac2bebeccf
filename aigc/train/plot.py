"""loss.png: training curves against optimizer steps, from metrics.jsonl.

Left panel: the losses a family logs (train and val loss; a GAN's discriminator and
generator losses). Right panel, when logged: the validation FD of a GAN.
"""

from __future__ import annotations

import json
from pathlib import Path

from aigc.atomic import atomic_path

LOSSES = [("train_loss", "train"), ("val_loss", "val"), ("d_loss", "discriminator"), ("g_loss", "generator")]


def plot_losses(metrics_path: Path, out_path: Path, title: str = "") -> None:
    """Draw every logged loss series (and val FD, if any) into a PNG, written atomically."""
    # imported here: matplotlib takes about a second to import, and the headless backend must be
    # chosen before pyplot loads; only training draws plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list] = {key: [] for key, _ in LOSSES + [("val_fd", "")]}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key in series:
            if isinstance(row.get(key), (int, float)):
                series[key].append((row["step"], row[key]))
    with_fd = bool(series["val_fd"])
    fig, axes = plt.subplots(1, 2 if with_fd else 1, figsize=(11 if with_fd else 7, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    for key, label in LOSSES:
        if series[key]:
            style = {"marker": "o", "markersize": 3} if key.startswith("val") else {"linewidth": 1, "alpha": 0.8}
            ax.plot(*zip(*series[key]), label=label, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if with_fd:
        ax = axes[0][1]
        ax.plot(*zip(*series["val_fd"]), marker="o", markersize=3, color="C3")
        ax.set_xlabel("step")
        ax.set_ylabel("FD (fmnist-classifier features)")
        ax.set_title("val FD, 1000 samples (lower is better)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
