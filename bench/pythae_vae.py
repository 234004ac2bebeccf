"""Reference row: the same convolutional VAE trained with the `pythae` library, scored with our metrics.

    pip install pythae==0.1.2        # installs beside torch 2.13.0 without touching it
    python bench/pythae_vae.py --cpu-minutes 15 --out bench/results/pythae-vae-15.json

The encoder and decoder have exactly the layers of our `vae` recipe (configs/fashion-vae.toml:
width 32, z_dim 32, Bernoulli decoder), wrapped in pythae's BaseEncoder/BaseDecoder and trained
by pythae's BaseTrainer (Adam, lr 1e-3, batch 64) on the 60k Fashion-MNIST train images in [0, 1].
pythae trains whole epochs; training stops after the last epoch that ends within the CPU-time
budget (process CPU time, one thread). The samples are scored by aigc.evaluate.images
(FD, KID, precision/recall in fmnist-classifier features) against the 10k test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn


class Budget(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", help="also write a 64-sample grid PNG here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pythae
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    from aigc.data.images import ImageData
    from aigc.config import load_config
    from aigc.evaluate.images import evaluate_image_model
    from aigc.generate.images import save_grid
    from aigc.data.prepared import ensure_prepared

    class Encoder(BaseEncoder):  # the layers of aigc.models.vae.VAE at width 32, z_dim 32
        def __init__(self):
            super().__init__()
            self.convs = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU())
            self.to_stats = nn.Linear(64 * 7 * 7, 64)

        def forward(self, x):
            mu, logvar = self.to_stats(self.convs(x).flatten(1)).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.from_z = nn.Linear(32, 64 * 7 * 7)
            self.convs = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                       nn.ConvTranspose2d(32, 1, 4, 2, 1))

        def forward(self, z):
            h = torch.relu(self.from_z(z)).view(-1, 64, 7, 7)
            return ModelOutput(reconstruction=torch.sigmoid(self.convs(h)))

    cfg = load_config(Path(__file__).parent.parent / "configs" / "fashion-vae.toml")
    data: ImageData = ensure_prepared(cfg)
    train_x = torch.from_numpy(data.images["train"]).float() / 255.0  # (60000, 1, 28, 28) in [0, 1]
    val_x = torch.from_numpy(data.images["val"][:2000]).float() / 255.0
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=32, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    n_params = sum(p.numel() for p in model.parameters())
    budget_s = args.cpu_minutes * 60
    start = time.process_time()
    epochs_done = []

    class StopAtBudget(TrainingCallback):
        """Stop after the last epoch that fits in the CPU budget (pythae has no time limit)."""

        def on_epoch_end(self, training_config, **kwargs):
            used = time.process_time() - start
            epochs_done.append(used)
            per_epoch = used / len(epochs_done)
            if used + per_epoch > budget_s:
                raise Budget

    out_dir = Path("runs") / f"pythae-vae-{args.cpu_minutes:g}"
    config = BaseTrainerConfig(output_dir=str(out_dir), num_epochs=10_000, learning_rate=1e-3,
                               per_device_train_batch_size=64, per_device_eval_batch_size=500,
                               no_cuda=True, seed=args.seed, steps_saving=None)
    trainer = BaseTrainer(model=model, train_dataset=BaseDataset(train_x, torch.zeros(len(train_x))),
                          eval_dataset=BaseDataset(val_x, torch.zeros(len(val_x))), training_config=config,
                          callbacks=[StopAtBudget()])
    try:
        trainer.train()
    except Budget:
        pass
    cpu_minutes = (time.process_time() - start) / 60
    model = trainer.model.eval()

    class Adapter:  # what evaluate_image_model needs of an aigc ImageModel
        classes: list = []
        device = torch.device("cpu")

        class model:  # noqa: N801
            @staticmethod
            @torch.no_grad()
            def generate(n, labels, gen):
                z = torch.randn(n, 32, generator=gen)
                return model.decoder(z).reconstruction * 2 - 1

    res = evaluate_image_model(Adapter, data, n=10000, seed=0, progress=False)
    res.update({"library": f"pythae {pythae.__version__}" if hasattr(pythae, "__version__") else "pythae 0.1.2",
                "parameters": n_params, "epochs": len(epochs_done), "cpu_minutes": round(cpu_minutes, 2),
                "budget_cpu_minutes": args.cpu_minutes, "threads": args.threads,
                "command": "python " + " ".join(sys.argv)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    if args.grid:
        with torch.no_grad():
            imgs = model.decoder(torch.randn(64, 32, generator=torch.Generator().manual_seed(0))).reconstruction
        save_grid(imgs * 2 - 1, args.grid, 8, {"model": "pythae VAE (bench/pythae_vae.py)",
                                               "epochs": len(epochs_done), "seed": 0})
    m = res["rows"]["model"]
    print(f"pythae VAE: {n_params:,} parameters, {len(epochs_done)} epochs in {cpu_minutes:.1f} CPU min; "
          f"FD {m['fd']:.3f} KID {m['kid']:.4f} precision {m['precision']:.3f} recall {m['recall']:.3f}")


if __name__ == "__main__":
    main()
